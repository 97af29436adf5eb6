//! The shard cores: one glommio executor per shard, pinned to its CPU, that
//! owns its receive queue, its Dam buckets and its models, and at stop drains
//! front to back (receive, mesh, overflow, output ring).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement as GlommioPlacement};

use crate::config::{Backend, Config};
use crate::ingest::udp;
use crate::shard::{DenyFeed, Shard, ShardSettings, ShardSnapshot};
use crate::telemetry::Published;

use super::queues::ShardSeed;
use super::{RunError, SetOnDrop};

/// What a shard runs beside its pipeline.
#[derive(Clone, Default)]
pub(super) struct ShardModels {
    /// The window model (each shard builds its own GGML context from it).
    pub window: Option<Arc<crate::model::window::FloatWindow>>,
    /// Read the in-kernel classifier's marks from the AF_XDP metadata.
    pub read_marks: bool,
    /// Device keys (`auth.keys`): each shard builds its own table.
    pub keys: Option<Arc<crate::shard::auth::KeyTable>>,
    /// The saved replay windows (`auth.replay_state`).
    pub replay: Option<Arc<crate::shard::auth::ReplayState>>,
    /// Where each shard leaves its devices' highest sequences at its end.
    pub replay_out: Arc<std::sync::Mutex<crate::shard::auth::ReplayState>>,
    /// The operator's deny list, as the admin API publishes it.
    pub deny: Arc<DenyFeed>,
    /// The UDP backend's port (its `[auth]` policy).
    pub port: u16,
}

/// What every shard shares: settings, the receive backend, the stop flag.
#[derive(Clone)]
pub(super) struct ShardEnv {
    pub shards: u16,
    pub settings: ShardSettings,
    pub backend: Backend,
    pub iface: String,
    pub xcfg: crate::ingest::af_xdp::XskConfig,
    pub maps: Option<Arc<crate::xdp::KernelMaps>>,
    pub stop: Arc<AtomicBool>,
    pub tick: Duration,
    pub models: ShardModels,
    /// `ingest.coalesce_us`.
    pub coalesce_us: u32,
}

impl ShardEnv {
    /// The shared part of every shard's start for `cfg`.
    pub fn new(
        cfg: &Config,
        n: usize,
        maps: Option<Arc<crate::xdp::KernelMaps>>,
        stop: Arc<AtomicBool>,
        tick: Duration,
        models: ShardModels,
    ) -> Self {
        ShardEnv {
            shards: n as u16,
            settings: super::shard_settings(cfg),
            backend: cfg.ingest.backend,
            iface: cfg.xdp.iface.clone().unwrap_or_default(),
            xcfg: crate::ingest::af_xdp::XskConfig {
                frames: cfg.ingest.af_xdp.frames,
                frame_size: cfg.ingest.af_xdp.frame_size,
                rx_ring: cfg.ingest.af_xdp.rx_ring,
                batch: cfg.ingest.af_xdp.batch,
            },
            maps,
            stop,
            tick,
            models,
            coalesce_us: cfg.ingest.coalesce_us,
        }
    }
}

/// The running shards.
pub(super) struct ShardSide {
    pub handles: Vec<glommio::ExecutorJoinHandle<std::io::Result<ShardSnapshot>>>,
    pub done: Vec<Arc<AtomicBool>>,
    pub stats: Vec<Arc<Published<ShardSnapshot>>>,
    /// Each shard's start: its id, or why it could not start.
    pub ready: std::sync::mpsc::Receiver<Result<u16, String>>,
}

/// Starts one pinned executor per seed.
pub(super) fn spawn(seeds: Vec<ShardSeed>, env: &ShardEnv) -> Result<ShardSide, RunError> {
    let (ready_tx, ready) = std::sync::mpsc::channel::<Result<u16, String>>();
    let mut side = ShardSide {
        handles: Vec::with_capacity(seeds.len()),
        done: Vec::with_capacity(seeds.len()),
        stats: Vec::with_capacity(seeds.len()),
        ready,
    };
    for seed in seeds {
        let done = Arc::new(AtomicBool::new(false));
        let stats = Published::<ShardSnapshot>::new();
        side.done.push(done.clone());
        side.stats.push(stats.clone());
        let (env, ready) = (env.clone(), ready_tx.clone());
        let handle = LocalExecutorBuilder::new(GlommioPlacement::Fixed(seed.cpu))
            .name(&format!("klais-shard-{}", seed.id))
            .spawn(move || async move {
                let _done = SetOnDrop(done);
                run_shard(seed, env, &stats, &ready).await
            })
            .map_err(|e| RunError::Core {
                role: "shard executor",
                reason: e.to_string(),
            })?;
        side.handles.push(handle);
    }
    Ok(side)
}

/// One shard core, from setup to the end of its drain.
async fn run_shard(
    seed: ShardSeed,
    env: ShardEnv,
    stats: &Published<ShardSnapshot>,
    ready: &std::sync::mpsc::Sender<Result<u16, String>>,
) -> std::io::Result<ShardSnapshot> {
    let id = seed.id;
    let (mut shard, socket) = match setup(seed, &env) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    let (stop, tick) = (&*env.stop, env.tick);
    match env.backend {
        Backend::Udp => {
            let Some(socket) = socket else {
                let _ = ready.send(Err(format!("shard {id}: no socket")));
                return Err(std::io::Error::other("no socket"));
            };
            let _ = ready.send(Ok(id));
            udp::receive_loop(socket, &mut shard, stop, stats, tick, env.coalesce_us).await?;
        }
        Backend::AfXdp => receive_af_xdp(&mut shard, id, &env, stats, ready).await?,
    }
    drain(&mut shard, id).await;
    {
        let mut out = env
            .models
            .replay_out
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (raw, top, fp) in shard.auth_tops() {
            out.record(raw, top, fp);
        }
    }
    let last = shard.snapshot();
    stats.publish(last);
    Ok(last)
    // `shard` drops here with its ring ends: the output stage sees them finished.
}

/// The shard with its models, setpoints, keys and deny list, made on its
/// own core; and its UDP socket, if any.
fn setup(seed: ShardSeed, env: &ShardEnv) -> std::io::Result<(Shard, Option<socket2::Socket>)> {
    let id = seed.id;
    let models = &env.models;
    let mut shard = Shard::new(id, env.shards, env.settings, seed.rings)
        .map_err(|e| std::io::Error::other(format!("shard {id}: {e}")))?;
    if let Some(w) = &models.window {
        // The shard's own GGML context, made on its core.
        let g = crate::model::window::GgmlWindow::new(w)
            .map_err(|e| std::io::Error::other(format!("shard {id}: window model: {e}")))?;
        shard.set_window_model(g);
    }
    if let Some(sp) = seed.setpoints {
        shard.follow_setpoints(sp);
    }
    if let Some(keys) = &models.keys {
        match &models.replay {
            Some(st) => shard.set_auth_with_state(keys, st),
            None => shard.set_auth(keys),
        }
    }
    shard.follow_deny_list(models.deny.clone());
    shard.set_port(models.port);
    Ok((shard, seed.socket))
}

/// The AF_XDP receive loop on queue `id`: the socket bound into the
/// filter's XSKMAP, unbound again when the stop flag ends the loop.
async fn receive_af_xdp(
    shard: &mut Shard,
    id: u16,
    env: &ShardEnv,
    stats: &Published<ShardSnapshot>,
    ready: &std::sync::mpsc::Sender<Result<u16, String>>,
) -> std::io::Result<()> {
    let queue = u32::from(id);
    let fail = |msg: String| {
        let _ = ready.send(Err(msg.clone()));
        std::io::Error::other(msg)
    };
    let mut xsk = crate::ingest::af_xdp::XskSocket::open(&env.iface, queue, &env.xcfg)
        .map_err(|e| fail(e.to_string()))?;
    let Some(maps) = env.maps.clone() else {
        return Err(fail("af_xdp needs the XDP filter (xdp.iface)".into()));
    };
    xsk.set_read_marks(env.models.read_marks);
    maps.bind_xsk(queue, &mut xsk)
        .map_err(|e| fail(e.to_string()))?;
    let _ = ready.send(Ok(id));
    let not_udp =
        crate::ingest::af_xdp::receive_loop(&mut xsk, shard, &env.stop, stats, env.tick, || {
            let _ = maps.unbind_socket(queue);
        })
        .await;
    if not_udp > 0 {
        tracing::warn!(
            shard = id,
            frames = not_udp,
            "AF_XDP delivered frames that are not UDP"
        );
    }
    Ok(())
}

/// Receive has stopped: hand nothing more to peers, take what they still
/// send, and move the overflow queue into the output ring (5 s at most).
async fn drain(shard: &mut Shard, id: u16) {
    shard.close_mesh();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        shard.release_all();
        shard.pump();
        if shard.mesh_finished() && shard.queued() == 0 {
            break;
        }
        if Instant::now() > deadline {
            let lost = shard.abandon_overflow();
            if lost > 0 {
                tracing::error!(shard = id, lost, "output stalled for 5 s during shutdown: queued messages dropped (counted as queue_full)");
            }
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    shard.finish_output();
}
