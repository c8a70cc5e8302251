//! Which addresses the job streams to: every address of every `--server`, with `streams` slots
//! each. Host names are resolved again every `resolve_every`, so pods that a headless Service
//! gains are used and pods it loses are let go (their slots finish what they carry and stop).
//! A failed or empty resolution keeps the addresses known before. The job's room for pending
//! items follows the addresses there are (`Room`).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::slot::{self, Backend};
use super::{Room, Shared};
use crate::connect::Target;

pub(super) async fn manage(
    shared: Arc<Shared>,
    targets: Vec<Target>,
    mut known: Vec<Vec<SocketAddr>>,
    mut room: Room,
) {
    let mut slots = JoinSet::new();
    let mut live: HashMap<(usize, SocketAddr), watch::Sender<bool>> = HashMap::new();
    loop {
        let wanted: Vec<(usize, SocketAddr)> = known
            .iter()
            .enumerate()
            .flat_map(|(t, addrs)| addrs.iter().map(move |a| (t, *a)))
            .collect();
        room.follow(&shared.settings, wanted.len());
        live.retain(|key, retire| {
            let keep = wanted.contains(key);
            if !keep {
                let _ = retire.send(true);
                shared.progress.warn(&format!(
                    "{} ({}): gone from DNS, no longer used",
                    targets[key.0].url, key.1
                ));
            }
            keep
        });
        for key in wanted {
            if live.contains_key(&key) {
                continue;
            }
            let target = &targets[key.0];
            let channel = match shared.connector.channel(target, key.1) {
                Ok(channel) => channel,
                Err(e) => {
                    shared.progress.warn(&e.to_string());
                    continue;
                }
            };
            let backend = Arc::new(Backend {
                name: format!("{} ({})", target.url, key.1),
                channel,
            });
            let (retire, retired) = watch::channel(false);
            for _ in 0..shared.settings.streams {
                slots.spawn(slot::run(shared.clone(), backend.clone(), retired.clone()));
            }
            live.insert(key, retire);
        }
        tokio::time::sleep(shared.settings.resolve_every).await;
        for (t, target) in targets.iter().enumerate() {
            match shared.connector.resolve(target).await {
                Ok(addrs) if !addrs.is_empty() => known[t] = addrs,
                Ok(_) => shared.progress.warn(&format!(
                    "--server {}: no address now; keeping the last ones",
                    target.url
                )),
                Err(e) => shared
                    .progress
                    .warn(&format!("{e}; keeping the last addresses")),
            }
        }
        // Slots that ended (retired ones) are reaped here.
        while slots.try_join_next().is_some() {}
    }
}
