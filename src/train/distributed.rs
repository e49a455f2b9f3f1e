//! Data-parallel training on Burn's collective engine (`burn-collective` 0.21): replicas on the
//! devices of one process (threads: the engine's local level) and across processes or machines
//! (its global level, coordinated by an orchestrator). Every replica holds the frozen base and
//! the adapters, takes a disjoint share of each global micro-batch, and sums its gradient sums,
//! trained-token counts and loss sums with the others before every optimizer step, so all take
//! the same step one process with the whole batch would.
//!
//! burn-collective 0.21 hangs on a second global operation after `register` (its node sync list
//! is never reset), so with several nodes each exchange registers, all-reduces one flat tensor
//! and finishes. Within one process the replicas register once: re-registering every step
//! raced in its local server (a replica could finish while the other was still registering).
//! `register` has no timeout of its own: a watchdog turns a missing peer into an error.

use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{
    AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective,
    register,
};

use super::best::Verdict;
use super::sync::{GradientSync, StepContribution};
use crate::recipe::DistributedSection;

/// Counters exchanged after the gradients: trained tokens, loss sum, input tokens, stop, step
/// (then the objective's metric sums).
const EXTRAS: usize = 5;

/// Multi-node only: how long a node waits after registering before exchanging, and after its
/// all-reduce before leaving the collective, so its peers' data services are up and its own
/// stays up while they download (burn-collective 0.21 races on both; see `sum`).
const SETTLE: Duration = Duration::from_millis(50);

/// Default orchestrator port (torchrun's `MASTER_PORT` default).
pub const DEFAULT_PORT: u16 = 29500;

/// Where this process sits in a data-parallel run.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Processes (one per machine) in the run.
    pub nodes: usize,
    pub node_rank: usize,
    /// Replicas in this process (one per device of `train.devices`).
    pub local_devices: usize,
    /// `host:port` of the orchestrator (more than one node only).
    pub orchestrator: String,
    /// Its port (node 0 serves it there).
    pub orchestrator_port: u16,
    /// Port this node serves tensors on (global level).
    pub data_port: u16,
    /// Host the other nodes reach this one at.
    pub node_host: String,
    /// How long to wait for the other replicas before giving up.
    pub timeout: Duration,
    /// The same for the first exchange, which waits for every node to start.
    pub startup_timeout: Duration,
    /// Node 0 runs the orchestrator in-process.
    pub start_orchestrator: bool,
}

fn env_usize(name: &str) -> Result<Option<usize>, String> {
    match std::env::var(name) {
        Ok(v) => {
            v.trim().parse().map(Some).map_err(|_| {
                format!("environment variable {name}={v} is not a non-negative integer")
            })
        }
        Err(_) => Ok(None),
    }
}

impl Topology {
    /// From the recipe's `distributed` section, then the torchrun-style environment
    /// (`WORLD_SIZE` nodes, `RANK` of this node, `MASTER_ADDR`/`MASTER_PORT` of the
    /// orchestrator), then `--node-rank`. The same recipe runs unchanged on every node.
    pub fn resolve(
        section: Option<&DistributedSection>,
        local_devices: usize,
        node_rank_flag: Option<usize>,
    ) -> Result<Self, String> {
        let default = DistributedSection::default();
        let d = section.unwrap_or(&default);
        let nodes = match d.nodes {
            Some(n) => n,
            None => env_usize("WORLD_SIZE")?.unwrap_or(1),
        };
        if nodes == 0 {
            return Err("distributed.nodes must be at least 1".into());
        }
        let node_rank = match node_rank_flag {
            Some(r) => r,
            None => env_usize("RANK")?.unwrap_or(0),
        };
        if node_rank >= nodes {
            return Err(format!(
                "this node's rank {node_rank} (--node-rank or RANK) is not below the node count {nodes}"
            ));
        }
        let orchestrator = match &d.orchestrator {
            Some(o) => o.clone(),
            None => {
                let host = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
                let port = match std::env::var("MASTER_PORT") {
                    Ok(p) => p
                        .trim()
                        .parse::<u16>()
                        .map_err(|_| format!("MASTER_PORT={p} is not a port number"))?,
                    Err(_) => DEFAULT_PORT,
                };
                format!("{host}:{port}")
            }
        };
        let orchestrator_port = orchestrator
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                format!("distributed.orchestrator '{orchestrator}' must be host:port")
            })?;
        let base_port = d
            .data_port
            .unwrap_or_else(|| orchestrator_port.saturating_add(1));
        let data_port = u16::try_from(usize::from(base_port) + node_rank)
            .map_err(|_| format!("distributed.data_port {base_port} + node rank overflows"))?;
        let node_host = match &d.node_host {
            Some(h) => h.clone(),
            None if nodes > 1 => local_address_towards(&orchestrator)?,
            None => "127.0.0.1".into(),
        };
        Ok(Self {
            nodes,
            node_rank,
            local_devices,
            orchestrator,
            orchestrator_port,
            data_port,
            node_host,
            timeout: Duration::from_secs(d.timeout_s.max(1)),
            startup_timeout: Duration::from_secs(d.startup_timeout_s.max(d.timeout_s).max(1)),
            start_orchestrator: d.start_orchestrator,
        })
    }

    pub fn world_size(&self) -> usize {
        self.nodes * self.local_devices
    }

    pub fn rank(&self, local_index: usize) -> usize {
        self.node_rank * self.local_devices + local_index
    }

    pub fn is_distributed(&self) -> bool {
        self.world_size() > 1
    }

    fn config(&self) -> Result<CollectiveConfig, String> {
        let mut c = CollectiveConfig::default().with_num_devices(self.local_devices);
        if self.nodes > 1 {
            let global = format!("ws://{}", self.orchestrator)
                .parse()
                .map_err(|e| format!("orchestrator address {}: {e:?}", self.orchestrator))?;
            let node = format!("ws://{}:{}", self.node_host, self.data_port)
                .parse()
                .map_err(|e| format!("node address {}: {e:?}", self.node_host))?;
            let nodes = u32::try_from(self.nodes).map_err(|_| "too many nodes".to_string())?;
            // Centralized: every node sends to one and gets the sum back. burn-collective 0.21's
            // ring sometimes lost a peer's slice when the nodes re-register every step
            // (a tokio worker panicked on a closed download), 2 runs in 7 on loopback.
            c = c
                .with_global_all_reduce_strategy(AllReduceStrategy::Centralized)
                .with_num_nodes(nodes)
                .with_global_address(global)
                .with_node_address(node)
                .with_data_service_port(self.data_port);
        }
        Ok(c)
    }
}

/// This machine's address on the route to `addr` (no packet is sent: a UDP `connect` only
/// picks the route).
fn local_address_towards(addr: &str) -> Result<String, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("distributed.orchestrator {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("distributed.orchestrator {addr}: no address"))?;
    let socket = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
    socket.connect(target).map_err(|e| format!("{addr}: {e}"))?;
    Ok(socket
        .local_addr()
        .map_err(|e| e.to_string())?
        .ip()
        .to_string())
}

/// One replica's side of the gradient exchange.
pub struct CollectiveSync<B: Backend> {
    peer: PeerId,
    rank: usize,
    world: usize,
    config: CollectiveConfig,
    device: B::Device,
    timeout: Duration,
    /// The first exchange's timeout (replaced by `timeout` after it).
    startup_timeout: Option<Duration>,
    /// Register and finish around every exchange (multi-node), or register once (one node).
    per_exchange: bool,
    registered: bool,
}

impl<B: Backend> CollectiveSync<B> {
    pub fn new(topology: &Topology, local_index: usize, device: B::Device) -> Result<Self, String> {
        let rank = topology.rank(local_index);
        Ok(Self {
            peer: PeerId::from(rank as u32),
            rank,
            world: topology.world_size(),
            config: topology.config()?,
            device,
            timeout: topology.timeout,
            startup_timeout: Some(topology.startup_timeout),
            per_exchange: topology.nodes > 1,
            registered: false,
        })
    }

    /// Sum `t` over all replicas: register, all-reduce, finish, under the watchdog.
    fn sum(&mut self, t: Tensor<B, 1>) -> anyhow::Result<Tensor<B, 1>> {
        let timeout = self.startup_timeout.take().unwrap_or(self.timeout);
        let (tx, rx) = mpsc::channel();
        let (peer, device, config) = (self.peer, self.device.clone(), self.config.clone());
        let prim = t.into_primitive().tensor();
        let register_first = self.per_exchange || !self.registered;
        let finish_after = self.per_exchange;
        std::thread::spawn(move || {
            let registered = if register_first {
                register::<B>(peer, device, config).map(|()| {
                    // Registration (re)starts this node's data service; a peer that connects
                    // before it listens panics in burn-communication ("Failed to connect to data
                    // server") instead of retrying.
                    if finish_after {
                        std::thread::sleep(SETTLE);
                    }
                })
            } else {
                Ok(())
            };
            let result = registered
                .and_then(|()| all_reduce::<B>(peer, prim, ReduceOperation::Sum))
                .and_then(|out| {
                    if !finish_after {
                        return Ok(out);
                    }
                    // A node that finishes the moment its own all-reduce returns can close its
                    // data service while a peer still downloads from it (burn-collective 0.21
                    // then panics in a websocket worker and the peer waits forever).
                    std::thread::sleep(SETTLE);
                    finish_collective::<B>(peer).map(|()| out)
                });
            let _ = tx.send(result);
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(out)) => {
                self.registered = true;
                Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
            }
            Ok(Err(e)) => anyhow::bail!(
                "replica {}: the gradient exchange failed: {e:?}; the last complete checkpoint \
                 is intact: fix the cause and resume every node with --resume",
                self.rank
            ),
            Err(_) => anyhow::bail!(
                "replica {}: no answer from the other {} replica(s) within {} s \
                 (distributed.timeout_s, or startup_timeout_s at the first exchange): a peer stopped or cannot be reached; the last complete \
                 checkpoint is intact: fix the cause and resume every node with --resume",
                self.rank,
                self.world - 1,
                timeout.as_secs()
            ),
        }
    }
}

impl<B: Backend> GradientSync<B> for CollectiveSync<B> {
    fn all_reduce(&mut self, local: StepContribution<B>) -> anyhow::Result<StepContribution<B>> {
        let device = self.device.clone();
        let shapes: Vec<[usize; 2]> = local.grad_sums.iter().map(|g| g.dims()).collect();
        let mut parts: Vec<Tensor<B, 1>> = local
            .grad_sums
            .into_iter()
            .map(|g| g.reshape([-1]))
            .collect();
        // Counts, the loss and the stop flag ride along with the gradients: one exchange per
        // step. f32 holds token counts exactly below 2^24 per step.
        let mut extras = vec![
            local.trained_tokens as f32,
            local.loss_sum as f32,
            local.input_tokens as f32,
            f32::from(u8::from(local.stop)),
            local.step as f32,
        ];
        extras.extend(local.metric_sums.iter().map(|&m| m as f32));
        let n_extras = extras.len();
        parts.push(Tensor::from_data(
            TensorData::new(extras, [n_extras]),
            &device,
        ));
        let total = self.sum(Tensor::cat(parts, 0))?;
        let n = total.dims()[0];
        let tail = total
            .clone()
            .narrow(0, n - n_extras, n_extras)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the exchanged counts: {e:?}"))?;
        // Replicas that resumed from different checkpoints would exchange gradients of
        // different steps; the step numbers ride along to catch that.
        let expected = (local.step * self.world) as f32;
        if (tail[4] - expected).abs() > 0.5 {
            anyhow::bail!(
                "replica {} is at step {} but the others are not (sum of steps {} over {} \
                 replicas): they started from different checkpoints; put output.dir on a \
                 filesystem every node sees and resume every node with --resume",
                self.rank,
                local.step + 1,
                tail[4],
                self.world
            );
        }
        let mut grads = Vec::with_capacity(shapes.len());
        let mut offset = 0;
        for s in shapes {
            let len = s[0] * s[1];
            grads.push(total.clone().narrow(0, offset, len).reshape(s));
            offset += len;
        }
        Ok(StepContribution {
            grad_sums: grads,
            trained_tokens: tail[0].round() as usize,
            loss_sum: f64::from(tail[1]),
            input_tokens: tail[2].round() as usize,
            stop: tail[3] > 0.0,
            step: local.step,
            metric_sums: tail[EXTRAS..].iter().map(|&m| f64::from(m)).collect(),
        })
    }

    fn barrier(&mut self) -> anyhow::Result<()> {
        // The global ring all-reduce needs at least one element per node.
        self.sum(Tensor::zeros([self.world.max(2)], &self.device))
            .map(|_| ())
    }

    fn share_verdict(&mut self, verdict: Verdict) -> anyhow::Result<Verdict> {
        // The global ring all-reduce needs at least one element per node.
        let mut values = vec![0f32; self.world.max(2)];
        values[0] = f32::from(u8::from(verdict.save_best));
        values[1] = f32::from(u8::from(verdict.stop));
        let n = values.len();
        let total = self.sum(Tensor::from_data(
            TensorData::new(values, [n]),
            &self.device,
        ))?;
        let v = total
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the shared verdict: {e:?}"))?;
        Ok(Verdict {
            save_best: v[0] > 0.0,
            stop: v[1] > 0.0,
        })
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }
}

/// Run the orchestrator that coordinates the nodes of a multi-node run until the process is
/// interrupted.
pub fn run_orchestrator(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

/// Start the orchestrator on a background thread of this process (node 0 does this).
pub fn spawn_orchestrator(port: u16) {
    std::thread::spawn(move || {
        if let Err(e) = run_orchestrator(port) {
            tracing::error!("orchestrator: {e}");
        }
    });
}
