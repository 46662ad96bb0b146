//! The simulated node. (Being written.)
use crate::cli::LabArgs;

#[derive(Debug, thiserror::Error)]
pub enum Error {}

pub fn run(_args: LabArgs) -> Result<(), Error> {
    Ok(())
}
