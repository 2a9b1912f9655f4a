//! MPI as the transport of a group of processes ([`ProcessGroup`]): `mpirun -np N swav
//! pretrain ...` runs one data-parallel worker per process over `MPI_COMM_WORLD`.
//!
//! [`MpiProcesses::init`] initialises MPI (threads: serialised; the worker's thread and the
//! coordinator's take turns, and every call here holds one lock) when the process was started
//! by an MPI launcher, and finalises it when dropped. A worker that fails calls `MPI_Abort`,
//! which ends every process of the job (Open MPI's `mpirun` then names the rank); a process
//! killed outright is noticed by the launcher, which ends the others.

use std::sync::Mutex;

use mpi::Threading;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::TrainError;
use swav_core::Collective;

use crate::process::ProcessGroup;

/// One MPI call at a time in this process.
static CALLS: Mutex<()> = Mutex::new(());

/// This process in `MPI_COMM_WORLD`; MPI is finalised when it is dropped.
#[derive(Debug)]
pub struct MpiProcesses {
    rank: usize,
    size: usize,
    universe: Mutex<Option<UniverseHandle>>,
}

impl std::fmt::Debug for UniverseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Universe")
    }
}

/// The MPI universe, finalised when dropped (it is only held).
struct UniverseHandle(#[allow(dead_code)] Universe);

impl MpiProcesses {
    /// Initialises MPI. Fails when MPI was initialised already or the library does not give
    /// serialised threading.
    pub fn init() -> Result<Self, TrainError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| TrainError::Parallel("MPI was initialised already".into()))?;
        if threading < Threading::Serialized {
            return Err(TrainError::Parallel(format!(
                "the MPI library gives threading level {threading:?}; swav-rs needs Serialized \
                 (its worker thread and its coordinator call MPI in turn)"
            )));
        }
        let world = universe.world();
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            universe: Mutex::new(Some(UniverseHandle(universe))),
        })
    }

    fn world() -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        CALLS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for MpiProcesses {
    fn drop(&mut self) {
        // Dropping the universe calls MPI_Finalize.
        self.finish();
    }
}

impl Collective for MpiProcesses {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.size
    }

    fn sum_f64(&self, values: &mut [f64]) {
        let _g = Self::lock();
        let send = values.to_vec();
        Self::world().all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn max_f64(&self, values: &mut [f64]) {
        let _g = Self::lock();
        let send = values.to_vec();
        Self::world().all_reduce_into(&send[..], values, SystemOperation::max());
    }

    fn sum_f32(&self, values: &mut [f32]) {
        let _g = Self::lock();
        let send = values.to_vec();
        Self::world().all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    fn abort(&self, message: &str) {
        eprintln!("{message}");
        eprintln!(
            "swav-rs: rank {} of {} ends the MPI job (MPI_Abort)",
            self.rank, self.size
        );
        Self::world().abort(70)
    }
}

impl ProcessGroup for MpiProcesses {
    fn finish(&self) {
        let _g = Self::lock();
        drop(
            self.universe
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
    }

    fn local_rank(&self) -> usize {
        crate::process::launcher_local_rank().unwrap_or(self.rank)
    }

    fn gather_f32(&self, mine: &[f32]) -> Option<Vec<Vec<f32>>> {
        let _g = Self::lock();
        let world = Self::world();
        let root = world.process_at_rank(0);
        // The lengths first, then the values in one buffer.
        let len = mine.len() as u64;
        if self.rank == 0 {
            let mut lens = vec![0u64; self.size];
            root.gather_into_root(&len, &mut lens[..]);
            let total: usize = lens.iter().map(|&l| l as usize).sum();
            let mut all = vec![0f32; total];
            let counts: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
            let displs: Vec<i32> = counts
                .iter()
                .scan(0i32, |at, &c| {
                    let d = *at;
                    *at += c;
                    Some(d)
                })
                .collect();
            {
                let mut partition =
                    mpi::datatype::PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                root.gather_varcount_into_root(mine, &mut partition);
            }
            let mut out = Vec::with_capacity(self.size);
            for (c, d) in counts.iter().zip(&displs) {
                out.push(all[*d as usize..(*d + *c) as usize].to_vec());
            }
            Some(out)
        } else {
            root.gather_into(&len);
            root.gather_varcount_into(mine);
            None
        }
    }
}
