//! The pathway as a graph of states, and the checks that are about its shape.
//!
//! Every check here is a graph question answered with petgraph: reachability from `initial`,
//! strongly connected components for traps and zero-time cycles, a longest path over timer
//! transitions for the horizon.

use std::collections::HashSet;

use petgraph::Direction;
use petgraph::algo::kosaraju_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, EdgeRef, Reversed};

use crate::decode::Located;
use crate::diagnostic::{Code, Diagnostic};
use crate::duration::IsoDuration;
use crate::json::escape_pointer;
use crate::pathway::{Action, Pathway};

/// How an edge is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// On an event, with or without a guard.
    Event {
        /// The event's name.
        name: String,
        /// Whether a guard must hold.
        guarded: bool,
    },
    /// When a timer fires.
    Timer(TimerKind),
}

/// The kind of a timer, with what is needed to reason about when it fires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// `after` a duration from entry.
    After(String),
    /// `at` an offset from a date field.
    At {
        /// The date field.
        anchor: String,
        /// The offset, as written.
        offset: String,
    },
    /// `every` cron schedule.
    Every(String),
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Event { name, guarded } => {
                write!(f, "{name}{}", if *guarded { " [guard]" } else { "" })
            }
            Trigger::Timer(TimerKind::After(d)) => write!(f, "after {d}"),
            Trigger::Timer(TimerKind::At { anchor, offset }) => write!(f, "at {anchor} {offset}"),
            Trigger::Timer(TimerKind::Every(c)) => write!(f, "every {c}"),
        }
    }
}

/// One edge: a transition or a timer with a target state.
#[derive(Clone, Debug)]
pub struct Edge {
    /// How it is taken.
    pub trigger: Trigger,
    /// The JSON pointer of the transition or timer.
    pub pointer: String,
}

/// The state graph of a pathway: one node per declared state, one edge per transition or timer
/// that names a declared target. Nodes are numbered in declaration order.
pub struct StateGraph<'p> {
    /// The graph; node weights are state names.
    pub graph: DiGraph<&'p str, Edge>,
    /// The node of `initial`, if it is declared.
    pub initial: Option<NodeIndex>,
}

impl<'p> StateGraph<'p> {
    /// Builds the graph of `p`; targets that are not declared are left out (reported elsewhere).
    pub fn new(p: &'p Pathway) -> Self {
        let mut graph = DiGraph::new();
        let nodes: Vec<NodeIndex> = p
            .states
            .keys()
            .map(|k| graph.add_node(k.as_str()))
            .collect();
        let index = |name: &str| p.states.get_index_of(name).map(|i| nodes[i]);
        for (si, (name, state)) in p.states.iter().enumerate() {
            let base = format!("/states/{}", escape_pointer(name));
            for (i, t) in state.on.iter().enumerate() {
                if let Some(to) = t.to.as_deref().and_then(index) {
                    graph.add_edge(
                        nodes[si],
                        to,
                        Edge {
                            trigger: Trigger::Event {
                                name: t.event.clone(),
                                guarded: t.guard.is_some(),
                            },
                            pointer: format!("{base}/on/{i}"),
                        },
                    );
                }
            }
            for (i, t) in state.timers.iter().enumerate() {
                let Some(to) = t.to.as_deref().and_then(index) else {
                    continue;
                };
                let kind = if let Some(a) = &t.after {
                    TimerKind::After(a.as_str().to_string())
                } else if let Some(at) = &t.at {
                    TimerKind::At {
                        anchor: at.anchor.clone(),
                        offset: at.offset.as_str().to_string(),
                    }
                } else {
                    TimerKind::Every(t.every.clone().unwrap_or_default())
                };
                graph.add_edge(
                    nodes[si],
                    to,
                    Edge {
                        trigger: Trigger::Timer(kind),
                        pointer: format!("{base}/timers/{i}"),
                    },
                );
            }
        }
        StateGraph {
            graph,
            initial: index(&p.initial),
        }
    }

    /// Every edge as (from, how, to), in declaration order.
    pub fn transitions(&self) -> Vec<(&'p str, &Edge, &'p str)> {
        self.graph
            .edge_references()
            .map(|e| (self.graph[e.source()], e.weight(), self.graph[e.target()]))
            .collect()
    }

    /// The states reachable from `initial`.
    pub fn reachable(&self) -> HashSet<NodeIndex> {
        let mut seen = HashSet::new();
        if let Some(start) = self.initial {
            let mut dfs = Dfs::new(&self.graph, start);
            while let Some(n) = dfs.next(&self.graph) {
                seen.insert(n);
            }
        }
        seen
    }
}

/// Runs the graph checks of one pathway.
pub fn check(p: &Pathway, located: &Located<'_>, out: &mut Vec<Diagnostic>) {
    let g = StateGraph::new(p);
    let state_ptr = |n: NodeIndex| format!("/states/{}", escape_pointer(g.graph[n]));
    let mut reachable = g.reachable();
    let terminal = |n: NodeIndex| p.is_terminal(g.graph[n]);
    // The horizon's stop is reached from wherever a family may still be when it passes.
    if let Some(stop) = &p.on_horizon
        && let Some(i) = p.states.get_index_of(&stop.to)
        && reachable.iter().any(|n| !terminal(*n))
    {
        reachable.insert(NodeIndex::new(i));
    }

    // unreachable-state
    if g.initial.is_some() {
        for n in g.graph.node_indices() {
            if !reachable.contains(&n) {
                out.push(located.at_key(
                    Code::UnreachableState,
                    &state_ptr(n),
                    format!(
                        "state \"{}\" cannot be reached from \"{}\"",
                        g.graph[n], p.initial
                    ),
                    Some("add a transition or timer into it, or remove it".into()),
                ));
            }
        }
    }

    // trap: reachable non-terminal states from which no terminal state can be reached.
    let mut can_finish = HashSet::new();
    let reversed = Reversed(&g.graph);
    for t in g.graph.node_indices().filter(|n| terminal(*n)) {
        let mut dfs = Dfs::new(reversed, t);
        while let Some(n) = dfs.next(reversed) {
            can_finish.insert(n);
        }
    }
    for scc in kosaraju_scc(&g.graph).into_iter().rev() {
        let mut trapped: Vec<NodeIndex> = scc
            .into_iter()
            .filter(|n| reachable.contains(n) && !can_finish.contains(n))
            .collect();
        if trapped.is_empty() {
            continue;
        }
        trapped.sort();
        let names: Vec<String> = trapped
            .iter()
            .map(|n| format!("\"{}\"", g.graph[*n]))
            .collect();
        let hint = if p.states.values().any(|s| s.terminal) {
            "add a transition or timer that leads towards a terminal state"
        } else {
            "the pathway has no terminal state: mark its ends with \"terminal\": true"
        };
        out.push(located.at_key(
            Code::Trap,
            &state_ptr(trapped[0]),
            format!(
                "no terminal state can be reached from {}: a family there would never leave",
                names.join(", ")
            ),
            Some(hint.into()),
        ));
    }

    // zero-time-cycle: timer edges that can fire at once (zero `after`, or `at` a moment that
    // may have passed) forming a cycle.
    let instant = g.graph.filter_map(
        |_, n| Some(*n),
        |_, e| match &e.trigger {
            Trigger::Timer(TimerKind::At { .. }) => Some(e.clone()),
            Trigger::Timer(TimerKind::After(d))
                if d.parse::<IsoDuration>()
                    .is_ok_and(|d| d.is_zero_or_negative()) =>
            {
                Some(e.clone())
            }
            _ => None,
        },
    );
    for scc in kosaraju_scc(&instant) {
        let cyclic = scc.len() > 1 || instant.contains_edge(scc[0], scc[0]);
        if !cyclic {
            continue;
        }
        let set: HashSet<_> = scc.iter().copied().collect();
        let edge = instant
            .edge_references()
            .find(|e| set.contains(&e.source()) && set.contains(&e.target()));
        let mut names: Vec<_> = scc.iter().map(|n| format!("\"{}\"", instant[*n])).collect();
        names.sort();
        if let Some(edge) = edge {
            out.push(located.at(
                Code::ZeroTimeCycle,
                &format!("{}/to", edge.weight().pointer),
                format!(
                    "timers can loop through {} without time passing",
                    names.join(", ")
                ),
                Some("give one timer in the loop a positive \"after\", or leave the loop on an event".into()),
            ));
        }
    }

    // wait-without-timeout: only events can leave.
    for n in g.graph.node_indices() {
        if terminal(n) || !reachable.contains(&n) || !can_finish.contains(&n) {
            continue;
        }
        let timed = g
            .graph
            .edges_directed(n, Direction::Outgoing)
            .any(|e| matches!(e.weight().trigger, Trigger::Timer(_)));
        if !timed {
            out.push(located.at_key(
                Code::WaitWithoutTimeout,
                &state_ptr(n),
                format!(
                    "state \"{}\" can only be left on an event: if it never comes, the family waits forever",
                    g.graph[n]
                ),
                Some("add a timer that moves the family on or closes the pathway, or explain the wait in the description".into()),
            ));
            continue;
        }
        // exit-waits-for-field: every way out is a timer on a date that may never be set.
        let exits: Vec<&Edge> = g
            .graph
            .edges_directed(n, Direction::Outgoing)
            .map(|e| e.weight())
            .collect();
        let mut fields: Vec<&str> = Vec::new();
        let all_wait = exits.iter().all(|e| match &e.trigger {
            Trigger::Timer(TimerKind::At { anchor, .. })
                if p.fields.get(anchor).is_some_and(|f| !f.required) =>
            {
                if !fields.contains(&anchor.as_str()) {
                    fields.push(anchor);
                }
                true
            }
            _ => false,
        });
        if all_wait && !fields.is_empty() {
            let names = fields
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(" and ");
            out.push(located.at_key(
                Code::ExitWaitsForField,
                &state_ptr(n),
                format!(
                    "state \"{}\" can only be left by a timer on {names}, which may never be set: the family would wait until the horizon stops it",
                    g.graph[n]
                ),
                Some(format!(
                    "add an \"after\" timer or an event that moves the family on without {names}, or make the field required"
                )),
            ));
        }
    }

    horizon(p, &g, located, out);
}

/// Where a moment of a timer-driven run falls, in days after enrolment (upper bound).
fn edge_days(p: &Pathway, trigger: &Trigger, from: i64) -> i64 {
    match trigger {
        Trigger::Timer(TimerKind::After(d)) => {
            from + d
                .parse::<IsoDuration>()
                .map_or(0, |d| d.upper_days().max(0))
        }
        Trigger::Timer(TimerKind::At { anchor, offset }) => {
            let within = p
                .fields
                .get(anchor)
                .and_then(|f| f.within.as_ref())
                .map_or(0, IsoDuration::upper_days);
            let offset = offset.parse::<IsoDuration>().map_or(0, |d| d.upper_days());
            from.max(within + offset)
        }
        Trigger::Timer(TimerKind::Every(cron)) => from + cron_gap_days(cron, &p.time_zone),
        Trigger::Event { .. } => from,
    }
}

/// The longest gap between two firings of a cron schedule over a year, in whole days (an hour
/// of slack absorbs the daylight-saving change).
fn cron_gap_days(cron: &str, tz: &str) -> i64 {
    const START: i64 = 1_798_761_600; // 2027-01-01T00:00:00Z
    let (Ok(schedule), Ok(tz), Ok(start)) = (
        crate::cron::Cron::parse(cron),
        crate::time::zone(tz),
        jiff::Timestamp::new(START, 0),
    ) else {
        return 366;
    };
    let Some(mut t) = schedule.next_after(start, &tz) else {
        return 366;
    };
    let mut longest = 0;
    while t.as_second() - START <= 366 * 86_400 {
        let Some(next) = schedule.next_after(t, &tz) else {
            return 366;
        };
        longest = longest.max(next.as_second() - t.as_second());
        t = next;
    }
    (longest - 3600 + 86_399) / 86_400
}

/// A path of states for a message: the first few and the last, so a message stays short
/// however long the pathway.
fn shorten_path(path: &[&str]) -> String {
    const HEAD: usize = 6;
    if path.len() <= HEAD + 2 {
        return path.join(" → ");
    }
    format!(
        "{} → … {} more … → {}",
        path[..HEAD].join(" → "),
        path.len() - HEAD - 1,
        path[path.len() - 1]
    )
}

fn horizon(p: &Pathway, g: &StateGraph<'_>, located: &Located<'_>, out: &mut Vec<Diagnostic>) {
    let limit = p.horizon.upper_days();
    let exceed = |days: i64| {
        format!(
            "up to {days} days after enrolment, beyond the horizon {} (at most {limit} days, counting a month as 31 days)",
            p.horizon
        )
    };

    // An `at` timer anywhere whose moment lies beyond the horizon.
    for (name, state) in &p.states {
        for (i, t) in state.timers.iter().enumerate() {
            if let Some(at) = &t.at {
                let days = edge_days(
                    p,
                    &Trigger::Timer(TimerKind::At {
                        anchor: at.anchor.clone(),
                        offset: at.offset.as_str().to_string(),
                    }),
                    0,
                );
                if days > limit {
                    out.push(located.at(
                        Code::HorizonExceeded,
                        &format!("/states/{}/timers/{i}/at", escape_pointer(name)),
                        format!("this timer fires {}", exceed(days)),
                        Some("shorten the offset, or lengthen the pathway's \"horizon\"".into()),
                    ));
                }
            }
        }
    }

    // The run driven by timers alone from `initial`.
    let Some(start) = g.initial else { return };
    let timers = g.graph.filter_map(
        |_, n| Some(*n),
        |_, e| matches!(e.trigger, Trigger::Timer(_)).then(|| e.clone()),
    );
    let mut reach = HashSet::new();
    let mut dfs = Dfs::new(&timers, start);
    while let Some(n) = dfs.next(&timers) {
        reach.insert(n);
    }
    let sub = timers.filter_map(
        |n, w| reach.contains(&n).then_some(*w),
        |_, e| Some(e.clone()),
    );
    // filter_map renumbers nodes; map the start by name.
    let Some(s) = sub.node_indices().find(|n| sub[*n] == timers[start]) else {
        return;
    };
    if let Some(cycle) = kosaraju_scc(&sub)
        .into_iter()
        .find(|c| c.len() > 1 || sub.contains_edge(c[0], c[0]))
    {
        let mut names: Vec<_> = cycle.iter().map(|n| format!("\"{}\"", sub[*n])).collect();
        names.sort();
        out.push(located.at(
            Code::HorizonExceeded,
            "/horizon",
            format!(
                "timers alone can keep a family circling through {} forever, beyond the horizon {}",
                names.join(", "),
                p.horizon
            ),
            Some("let the loop end in a terminal state after a number of rounds, or leave it on an event".into()),
        ));
        return;
    }
    let order = match petgraph::algo::toposort(&sub, None) {
        Ok(o) => o,
        Err(_) => return,
    };
    let mut best: Vec<Option<(i64, Option<NodeIndex>)>> = vec![None; sub.node_count()];
    best[s.index()] = Some((0, None));
    for n in order {
        let Some((t, _)) = best[n.index()] else {
            continue;
        };
        for e in sub.edges_directed(n, Direction::Outgoing) {
            let arrive = edge_days(p, &e.weight().trigger, t);
            let slot = &mut best[e.target().index()];
            if slot.is_none_or(|(old, _)| arrive > old) {
                *slot = Some((arrive, Some(n)));
            }
        }
    }
    let worst = sub
        .node_indices()
        .filter_map(|n| best[n.index()].map(|(t, _)| (t, n)))
        .max();
    if let Some((days, end)) = worst
        && days > limit
    {
        let mut path = vec![sub[end]];
        let mut cur = end;
        while let Some((_, Some(prev))) = best[cur.index()] {
            path.push(sub[prev]);
            cur = prev;
        }
        path.reverse();
        out.push(located.at(
            Code::HorizonExceeded,
            "/horizon",
            format!(
                "timers alone can keep a family on the pathway ({}) {}",
                shorten_path(&path),
                exceed(days)
            ),
            Some("shorten the timers on that path, or lengthen \"horizon\"".into()),
        ));
    }
}

/// Whether a state has someone responsible: an `owner`, or an `enter` handoff that names one.
pub fn has_owner(state: &crate::pathway::State) -> bool {
    state.owner.is_some() || state.enter.iter().any(|a| matches!(a, Action::Handoff(_)))
}

/// Renders the graph as Graphviz DOT: states grouped by the owner's sector, edges labelled.
pub fn to_dot(p: &Pathway) -> String {
    use std::fmt::Write;
    let g = StateGraph::new(p);
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape_dot(&p.id));
    let _ = writeln!(
        out,
        "  label=\"{} (v{})\";",
        escape_dot(&p.title),
        p.version
    );
    let _ = writeln!(
        out,
        "  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];"
    );
    for (cluster, (sector, nodes)) in by_sector(p).into_iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{cluster} {{");
        let _ = writeln!(out, "    label=\"{}\"; style=dashed;", sector_title(sector));
        for name in nodes {
            let s = &p.states[name];
            let shape = if s.terminal {
                ", shape=doubleoctagon"
            } else {
                ""
            };
            // `\n` is DOT's line break inside a label: the parts are escaped, the break not.
            let owner = owner_of(s)
                .map(|o| format!("\\n({})", escape_dot(o)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    \"{}\" [label=\"{}{owner}\", fillcolor=\"{}\"{shape}];",
                escape_dot(name),
                escape_dot(s.title.as_deref().unwrap_or(name)),
                sector_colour(sector)
            );
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(
        out,
        "  __start [shape=point];\n  __start -> \"{}\";",
        escape_dot(&p.initial)
    );
    for e in g.graph.edge_references() {
        let style = if matches!(e.weight().trigger, Trigger::Timer(_)) {
            ", style=dashed"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{}\"{style}];",
            escape_dot(g.graph[e.source()]),
            escape_dot(g.graph[e.target()]),
            escape_dot(&e.weight().trigger.to_string())
        );
    }
    out.push_str("}\n");
    out
}

/// Renders the graph as a Mermaid flowchart: one subgraph per owner sector, edges labelled.
pub fn to_mermaid(p: &Pathway) -> String {
    use std::fmt::Write;
    let g = StateGraph::new(p);
    let id = |name: &str| {
        let i = p.states.get_index_of(name).unwrap_or(0);
        format!("s{i}")
    };
    let mut out = String::from("flowchart LR\n");
    let _ = writeln!(out, "  start((start)) --> {}", id(&p.initial));
    for (sector, nodes) in by_sector(p) {
        // Subgraph ids are prefixed: `end` is a Mermaid keyword, and so may others become.
        let _ = writeln!(
            out,
            "  subgraph sector_{sector}[\"{}\"]",
            sector_title(sector)
        );
        for name in nodes {
            let s = &p.states[name];
            let label = escape_mermaid(s.title.as_deref().unwrap_or(name));
            let owner = owner_of(s)
                .map(|o| format!("<br/>({})", escape_mermaid(o)))
                .unwrap_or_default();
            if s.terminal {
                let _ = writeln!(out, "    {}((\"{label}\"))", id(name));
            } else {
                let _ = writeln!(out, "    {}[\"{label}{owner}\"]", id(name));
            }
        }
        let _ = writeln!(out, "  end");
    }
    for e in g.graph.edge_references() {
        let arrow = if matches!(e.weight().trigger, Trigger::Timer(_)) {
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(
            out,
            "  {} {arrow}|\"{}\"| {}",
            id(g.graph[e.source()]),
            escape_mermaid(&e.weight().trigger.to_string()),
            id(g.graph[e.target()])
        );
    }
    for (sector, _) in by_sector(p) {
        let _ = writeln!(
            out,
            "  style sector_{sector} fill:{}",
            sector_colour(sector)
        );
    }
    out
}

/// Who is responsible for a family in `state`: its owner, or the role an `enter` handoff
/// passes the family to.
fn owner_of(state: &crate::pathway::State) -> Option<&str> {
    state.owner.as_deref().or_else(|| {
        state.enter.iter().find_map(|a| match a {
            Action::Handoff(h) => Some(h.to.as_str()),
            _ => None,
        })
    })
}

/// A group's title in a drawing.
fn sector_title(sector: &str) -> &'static str {
    match sector {
        "region" => "region",
        "municipality" => "municipality",
        "civil_society" => "civil society",
        "family" => "family",
        _ => "ends",
    }
}

/// States grouped by the sector of who is responsible there (its owner, or the receiver of
/// its entry handoff); terminal states, which have nobody, under "ends".
fn by_sector(p: &Pathway) -> Vec<(&'static str, Vec<&str>)> {
    let mut groups: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for (name, s) in &p.states {
        let sector = sector_of(p, s);
        match groups.iter_mut().find(|(k, _)| *k == sector) {
            Some((_, v)) => v.push(name),
            None => groups.push((sector, vec![name])),
        }
    }
    groups
}

/// The sector of who is responsible in state `s`; "ends" for a state with nobody.
fn sector_of(p: &Pathway, s: &crate::pathway::State) -> &'static str {
    owner_of(s)
        .and_then(|o| p.roles.get(o))
        .map_or("ends", |r| r.sector.as_str())
}

fn sector_colour(sector: &str) -> &'static str {
    match sector {
        "region" => "#dbeafe",
        "municipality" => "#dcfce7",
        "civil_society" => "#fee2e2",
        "family" => "#fef9c3",
        _ => "#e5e7eb",
    }
}

fn escape_dot(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn escape_mermaid(s: &str) -> String {
    s.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
        .replace('|', "#124;")
}

/// Renders the graph as a standalone SVG drawing, laid out here with no outside tool: the
/// states where the family is looked after in columns by their distance from `initial`, the
/// ends in a row beneath; states filled by the owner's sector; forward edges straight, edges
/// back or within a column as arcs above; timer edges dashed; labels on a white halo. It
/// carries a `<title>` and a `<desc>` for screen readers.
pub fn to_svg(p: &Pathway) -> String {
    use std::fmt::Write;
    const W: i64 = 200;
    const H: i64 = 52;
    const COL: i64 = 330;
    const ROW: i64 = 110;
    const PAD: i64 = 30;
    let g = StateGraph::new(p);
    // Ranks by breadth-first distance: a queue, never recursion, whatever the input's size.
    let n = g.graph.node_count();
    let mut rank: Vec<Option<usize>> = vec![None; n];
    let mut queue = std::collections::VecDeque::new();
    if let Some(start) = g.initial {
        rank[start.index()] = Some(0);
        queue.push_back(start);
    }
    while let Some(node) = queue.pop_front() {
        let r = rank[node.index()].unwrap_or(0);
        for next in g.graph.neighbors(node) {
            if rank[next.index()].is_none() {
                rank[next.index()] = Some(r + 1);
                queue.push_back(next);
            }
        }
    }
    let terminal: Vec<bool> = p.states.values().map(|s| s.terminal).collect();
    let last = rank.iter().flatten().max().map_or(0, |m| m + 1);
    let mut columns: Vec<i64> = vec![0; last + 1];
    let mut place = vec![(0i64, 0i64); n];
    // Room above the columns for the arcs of edges that go back.
    let top = PAD + 60;
    for i in (0..n).filter(|i| !terminal[*i]) {
        let c = rank[i].unwrap_or(last);
        place[i] = (PAD + c as i64 * COL, top + columns[c] * ROW);
        columns[c] += 1;
    }
    let used = columns.iter().filter(|c| **c > 0).count().max(1) as i64;
    let tallest = columns.iter().copied().max().unwrap_or(0).max(1);
    let ends_y = top + tallest * ROW + 40;
    let ends: Vec<usize> = (0..n).filter(|i| terminal[*i]).collect();
    let ends_gap = (W + 40).max(((used - 1) * COL) / (ends.len() as i64).max(1));
    for (k, i) in ends.iter().enumerate() {
        place[*i] = (PAD + k as i64 * ends_gap, ends_y);
    }
    let width =
        PAD * 2 + ((used - 1) * COL + W).max(ends.len().saturating_sub(1) as i64 * ends_gap + W);
    let height = ends_y + H + PAD;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-labelledby=\"graph-title graph-desc\" font-family=\"system-ui, sans-serif\">"
    );
    let _ = writeln!(
        out,
        "<title id=\"graph-title\">{} (v{})</title>",
        escape_xml(&p.title),
        p.version
    );
    let _ = writeln!(
        out,
        "<desc id=\"graph-desc\">{} states, {} transitions; starts in {}</desc>",
        n,
        g.graph.edge_count(),
        escape_xml(&p.initial)
    );
    out.push_str(
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#374151\"/></marker></defs>\n",
    );
    // Edges first, so the boxes sit on top of their ends; labels last, on top of everything.
    let mut labels = String::new();
    let mut seen_pairs: std::collections::HashMap<(usize, usize), i64> = Default::default();
    let mut to_ends: std::collections::HashMap<usize, i64> = Default::default();
    for e in g.graph.edge_references() {
        let (s, t) = (e.source().index(), e.target().index());
        let k = seen_pairs.entry((s, t)).or_insert(0);
        let nth = *k;
        *k += 1;
        let (sx, sy) = place[s];
        let (tx, ty) = place[t];
        let dash = if matches!(e.weight().trigger, Trigger::Timer(_)) {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let (path, lx, ly) = if terminal[t] {
            // Down to an end: from the bottom of the state to the top of the end; the labels
            // of one state's edges to the ends one under the other.
            let k = to_ends.entry(s).or_insert(0);
            let nth = *k;
            *k += 1;
            let (x1, y1, x2, y2) = (sx + W / 2, sy + H, tx + W / 2, ty);
            // The label near its source: the ends gather many edges, their sources are apart.
            (
                format!("M{x1},{y1} L{x2},{y2}"),
                x1 + (x2 - x1) / 4,
                y1 + (y2 - y1) / 4 + 4 + nth * 13,
            )
        } else if tx == sx && ty > sy {
            // Down the same column.
            let (x, y1, y2) = (sx + W / 2 - 30, sy + H, ty);
            (
                format!("M{x},{y1} L{x},{y2}"),
                x,
                (y1 + y2) / 2 + 4 + nth * 13,
            )
        } else if tx > sx {
            let (x1, y1, x2, y2) = (sx + W, sy + H / 2, tx, ty + H / 2);
            (
                (format!("M{x1},{y1} L{x2},{y2}")),
                (x1 + x2) / 2,
                (y1 + y2) / 2 - 5 + nth * 13,
            )
        } else {
            // Back, or within a column: an arc over both boxes.
            let (x1, y1, x2, y2) = (sx + W / 2 + 12, sy, tx + W / 2 - 12, ty);
            let rise = 36 + nth * 13 + ((sx - tx).abs() / COL) * 6;
            let apex = y1.min(y2) - rise;
            (
                format!("M{x1},{y1} C{x1},{apex} {x2},{apex} {x2},{y2}"),
                (x1 + x2) / 2,
                apex + 8,
            )
        };
        let _ = writeln!(
            out,
            "<path class=\"edge\" d=\"{path}\" fill=\"none\" stroke=\"#374151\" stroke-width=\"1.4\"{dash} marker-end=\"url(#arrow)\"/>"
        );
        let _ = writeln!(
            labels,
            "<text x=\"{lx}\" y=\"{ly}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#111827\" stroke=\"#ffffff\" stroke-width=\"4\" paint-order=\"stroke\">{}</text>",
            escape_xml(&e.weight().trigger.to_string())
        );
    }
    if let Some(start) = g.initial {
        let (x, y) = place[start.index()];
        let _ = writeln!(
            out,
            "<text x=\"{x}\" y=\"{}\" font-size=\"12\" fill=\"#111827\">start</text>",
            y - 8
        );
    }
    for (i, (name, s)) in p.states.iter().enumerate() {
        let (x, y) = place[i];
        let sector = sector_of(p, s);
        let title = s.title.as_deref().unwrap_or(name);
        let short: String = if title.chars().count() > 28 {
            title.chars().take(27).chain(['…']).collect()
        } else {
            title.to_string()
        };
        let stroke = if s.terminal {
            " stroke-width=\"3\""
        } else {
            ""
        };
        let owner = owner_of(s).unwrap_or(if s.terminal { "end" } else { "" });
        let _ = writeln!(
            out,
            "<g class=\"state\" id=\"state-{i}\"><title>{}</title><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"10\" fill=\"{}\" stroke=\"#374151\"{stroke}/><text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#111827\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#374151\">{}</text></g>",
            escape_xml(&format!("{title} ({name})")),
            sector_colour(sector),
            x + W / 2,
            y + 21,
            escape_xml(&short),
            x + W / 2,
            y + 39,
            escape_xml(owner),
        );
    }
    out.push_str(&labels);
    out.push_str("</svg>\n");
    out
}

/// Escapes text for XML content and attribute values.
fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_gap_of_twice_weekly_is_four_days() {
        assert_eq!(cron_gap_days("0 10 * * MON,THU", "Europe/Copenhagen"), 4);
        assert_eq!(cron_gap_days("0 9 1 * *", "Europe/Copenhagen"), 31);
    }

    #[test]
    fn upper_days_of_spans() {
        assert_eq!(
            crate::duration::upper_days(jiff::Span::new().months(2).days(1)),
            63
        );
    }
}
