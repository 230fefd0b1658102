//! `clo train --distributed mpi`: data parallelism across processes (and machines) through MPI.
//!
//! Built with the `mpi` cargo feature (the `mpi` crate over the system's MPI, OpenMPI on
//! Debian/Ubuntu: `apt install libopenmpi-dev openmpi-bin libclang-dev`). Each rank runs `clo
//! train` on its own `--devices`; every micro-batch is split by whole quadruples across the ranks,
//! and the trainer sums gradients and logged numbers with `MPI_Allreduce` between the local sum
//! and the optimizer step, so every rank applies the same update. Rank 0 alone writes the run.

use std::sync::Arc;

use clo_core::train::parallel::Collective;

/// The `--distributed` choices.
pub const DISTRIBUTED_HELP: &str = "mpi: run under mpirun (clo built with --features mpi); every rank trains on its own --devices and gradients are summed over MPI";

/// The collective of `--distributed KIND`.
pub fn collective(kind: &str) -> anyhow::Result<Arc<dyn Collective>> {
    match kind {
        "mpi" => mpi_collective(),
        other => anyhow::bail!("--distributed {other}: unknown; expected {DISTRIBUTED_HELP}"),
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_collective() -> anyhow::Result<Arc<dyn Collective>> {
    anyhow::bail!(
        "--distributed mpi: this clo was built without MPI\nHINT: install OpenMPI (apt install libopenmpi-dev openmpi-bin libclang-dev) and build with `cargo build --release -p clo --features mpi`"
    )
}

#[cfg(feature = "mpi")]
fn mpi_collective() -> anyhow::Result<Arc<dyn Collective>> {
    Ok(Arc::new(imp::Mpi::init()?))
}

#[cfg(feature = "mpi")]
mod imp {
    use std::sync::Mutex;

    use clo_core::error::{CoreError, Result};
    use clo_core::train::parallel::Collective;
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// MPI's world communicator. Calls are serialized by the mutex (MPI is initialized with
    /// `MPI_THREAD_SERIALIZED`), so the handle may move between threads.
    pub struct Mpi {
        world: Mutex<SimpleCommunicator>,
        rank: usize,
        size: usize,
        // Finalizes MPI when dropped (after the world handle).
        _universe: Universe,
    }

    // SAFETY: the communicator is only used under the mutex, and MPI was initialized with
    // MPI_THREAD_SERIALIZED, which allows calls from any thread as long as they do not overlap.
    unsafe impl Send for Mpi {}
    unsafe impl Sync for Mpi {}

    impl std::fmt::Debug for Mpi {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "MPI rank {} of {}", self.rank, self.size)
        }
    }

    impl Mpi {
        pub fn init() -> anyhow::Result<Self> {
            let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--distributed mpi: MPI was already initialized in this process"
                    )
                })?;
            if level < mpi::Threading::Serialized {
                anyhow::bail!(
                    "--distributed mpi: this MPI offers thread level {level:?}; clo needs Serialized"
                );
            }
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            tracing::info!(rank, size, "MPI initialized");
            Ok(Self {
                world: Mutex::new(world),
                rank,
                size,
                _universe: universe,
            })
        }
    }

    /// Elements per MPI call (its counts are C ints).
    const CHUNK: usize = 1 << 28;

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        fn all_reduce_sum(&self, values: &mut [f32]) -> Result<()> {
            let world = self.world.lock().map_err(|_| {
                CoreError::Invalid("the MPI communicator's lock is poisoned".into())
            })?;
            for chunk in values.chunks_mut(CHUNK) {
                let send = chunk.to_vec();
                world.all_reduce_into(&send[..], chunk, SystemOperation::sum());
            }
            Ok(())
        }
    }
}
