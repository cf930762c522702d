//! What `smartscheduler replay` prints: the range, the plan, a progress bar or lines, the outcome. The replay
//! itself ([`super::replay`]) does no terminal I/O; this module drives it and reports.

use super::replay::{ReplayOptions, ReplayPlan, ReplayRequest, ResolvedReplay, execute, plan, resolve};
use sqlx::PgPool;
use std::io::IsTerminal;

/// Runs `request` and reports on stdout: the resolved range, a note when part of it has expired, then the
/// plan (with `dry_run`, and nothing is written) or the progress (a bar on a terminal, else one line per
/// batch) and the outcome. Errors: positions of another epoch
/// ([`ReplayError::EpochMismatch`](super::replay::ReplayError::EpochMismatch)) and database errors.
pub async fn run(pool: &PgPool, request: &ReplayRequest, dry_run: bool) -> anyhow::Result<()> {
    let replay = resolve(pool, request).await?;
    let range = format!(
        "after {} through {}{}{}",
        replay.position(replay.after_seq),
        replay.position(replay.through_seq),
        if replay.groups.is_empty() { String::new() } else { format!(", groups {}", replay.groups.join(",")) },
        replay.job.map_or_else(String::new, |job| format!(", job {job}")),
    );
    if replay.after_seq < replay.expired_through_seq {
        println!(
            "note: events through {} have expired (retention); only later events can be replayed",
            replay.position(replay.expired_through_seq)
        );
    }
    let plan = plan(pool, &replay).await?;
    if dry_run {
        println!("dry run: {range}");
        print_plan(&replay, &plan);
        println!("nothing was published");
        return Ok(());
    }
    if plan.to_replay == 0 {
        println!(
            "nothing to replay ({range}): {} matching event(s), {} already replayed",
            plan.matched, plan.already_replayed
        );
        return Ok(());
    }
    println!("replaying {} event(s) ({range}); {} already replayed, skipped", plan.to_replay, plan.already_replayed);
    let total = plan.to_replay;
    let bar = std::io::stdout().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total.unsigned_abs());
        let style = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} replayed, {eta} left {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar
    });
    let done = execute(pool, &replay, &ReplayOptions::default(), |p| match &bar {
        Some(bar) => {
            bar.set_position(p.replayed.unsigned_abs());
            bar.set_message(format!("(through {})", replay.position(p.through_seq)));
        }
        None => println!("replayed {}/{total} (through {})", p.replayed, replay.position(p.through_seq)),
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "replayed {} event(s) into the outbox, skipped {} already replayed; the relay publishes them as new \
         positions after {}",
        done.replayed,
        done.skipped,
        replay.position(replay.through_seq)
    );
    Ok(())
}

/// The dry run's table: totals, first and last position, and counts per group.
fn print_plan(replay: &ResolvedReplay, plan: &ReplayPlan) {
    let position = |seq: Option<i64>| seq.map_or_else(|| "-".to_owned(), |s| replay.position(s));
    println!("matching events:   {}", plan.matched);
    println!("already replayed:  {} (would be skipped)", plan.already_replayed);
    println!("would replay:      {}", plan.to_replay);
    println!("first position:    {}", position(plan.first_seq));
    println!("last position:     {}", position(plan.last_seq));
    if !plan.per_group.is_empty() {
        let width = plan.per_group.iter().map(|(g, _, _)| g.len()).max().unwrap_or(5).max(5);
        println!("per group (an event counts in each of its groups):");
        println!("  {:width$}  {:>9}  {:>12}", "GROUP", "MATCHING", "WOULD REPLAY");
        for (group, matched, to_replay) in &plan.per_group {
            println!("  {group:width$}  {matched:>9}  {to_replay:>12}");
        }
    }
}
