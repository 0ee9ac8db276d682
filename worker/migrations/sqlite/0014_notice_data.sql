-- A notice is data until it is sent: the values its template needs (sealed like fields when a
-- data key is set). Delivery renders it, stores the text it sent in subject/body/html, and the
-- firing transaction renders nothing. Rows from before this column have their text already.
ALTER TABLE outbox ADD COLUMN data TEXT;
