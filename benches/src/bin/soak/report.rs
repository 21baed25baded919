//! The report: one markdown table of every count and goal, then the resource trend, then the
//! first failures. True when every goal is met.

use std::time::Duration;

use crate::account::Books;
use crate::sample::{after_warmup, trend, Sample};

pub fn print(books: &Books, samples: &[Sample], run: Duration, seed: u64, alive: bool) -> bool {
    let t = &books.tally;
    let mut ok = alive;
    let mut rows = vec![
        "| measure | count | goal |".to_string(),
        "|---|---|---|".to_string(),
    ];
    let info = [
        (
            "HTTP requests, kept-alive connections (sticky by header)",
            &t.http_keepalive,
        ),
        ("HTTP requests, a new connection each", &t.http_new),
        ("HTTPS requests (20 per connection)", &t.https),
        (
            "RDP connection requests (sticky by mstshash cookie, shared through Redis)",
            &t.rdp,
        ),
        ("UDP datagrams", &t.udp),
        ("long-lived TCP connections opened", &t.long_opened),
        ("long-lived TCP echoes", &t.long_lines),
        (
            "long-lived TCP connections ended by a kill of their backend",
            &t.long_on_killed,
        ),
        (
            "UDP datagrams lost to a kill of their flow's backend",
            &t.udp_on_killed,
        ),
        (
            "sticky clients moved after their backend was killed or drained",
            &t.moved_after_kill,
        ),
    ];
    for (what, n) in info {
        rows.push(format!("| {what} | {} | |", n.get()));
    }
    let goals = [
        (
            "failed idempotent requests (HTTP, HTTPS GET)",
            t.failed_idempotent.get(),
        ),
        ("failed RDP connection requests", t.failed_rdp.get()),
        (
            "dropped long-lived TCP connections not on a killed backend",
            t.dropped_long.get(),
        ),
        (
            "UDP datagrams lost not on a killed backend",
            t.lost_udp.get(),
        ),
        ("persistence violations", t.persistence_violations.get()),
        (
            "reloads or API calls answered wrongly",
            t.reload_wrong.get(),
        ),
        ("proxy exited", u64::from(!alive)),
    ];
    for (what, n) in goals {
        ok &= n == 0;
        let verdict = if n == 0 { "met" } else { "MISSED" };
        rows.push(format!("| **{what}** | **{n}** | 0 {verdict} |"));
    }

    let judged = after_warmup(samples, run);
    let trends = [
        trend(judged, "RSS (KiB)", |s| s.rss_kib, 0.10, 8192.0, "KiB"),
        trend(judged, "open descriptors", |s| s.fds, 0.10, 16.0, ""),
        trend(judged, "threads", |s| s.threads, 0.0, 2.0, ""),
    ];
    let mut table = vec![
        "| resource (after warm-up) | first third, mean | last third, mean | max | tolerance | flat |"
            .to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    for tr in &trends {
        ok &= tr.flat;
        table.push(format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} |",
            tr.name,
            tr.first,
            tr.last,
            tr.max,
            tr.tolerance,
            if tr.flat { "yes" } else { "**NO**" }
        ));
    }
    // The shape over time tells a leak (a steady climb) from a plateau or a sawtooth.
    let mut minute = 0;
    let mut by_minute = Vec::new();
    for s in samples {
        if s.at >= Duration::from_secs(60 * minute) {
            by_minute.push(format!("{:.0}", s.rss_kib as f64 / 1024.0));
            minute = s.at.as_secs() / 60 + 1;
        }
    }
    table.push(format!(
        "\nRSS (MiB) at the start of each minute: {}",
        by_minute.join(" ")
    ));
    let actions = books.actions.lock().unwrap();
    let mut chaos: Vec<String> = actions.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
    chaos.sort();
    println!(
        "Chaos soak: {:.1} minutes, seed {seed}, {} samples ({} after warm-up)\n\nChaos: {}\n\n{}\n\n{}\n",
        run.as_secs_f64() / 60.0,
        samples.len(),
        judged.len(),
        chaos.join(", "),
        rows.join("\n"),
        table.join("\n")
    );
    let details = books.details();
    if !details.is_empty() {
        println!("First failures:\n");
        for d in details {
            println!("- {d}");
        }
    }
    println!(
        "\nVerdict: {}",
        if ok { "every goal met" } else { "GOALS MISSED" }
    );
    ok
}
