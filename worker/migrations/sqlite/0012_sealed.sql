-- With CAREPATH_DATA_KEY set, families' fields and event payloads are sealed in the file
-- (XChaCha20-Poly1305). `key_check` proves which key sealed them, so a wrong key, or none, is
-- refused at start instead of failing on the first family read.
ALTER TABLE installation ADD COLUMN key_check TEXT;
