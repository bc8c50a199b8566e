//! A stop flag that long lab steps look at between (and inside) their waits, so a
//! signal handled elsewhere (the demo's Ctrl-C) ends them promptly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crate::{Error, Result};

/// Cloneable; every clone sees [`Interrupt::raise`].
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Ask every holder to stop.
    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// [`Error::Interrupted`] once raised.
    pub fn check(&self) -> Result<()> {
        if self.raised() {
            return Err(Error::Interrupted);
        }
        Ok(())
    }

    /// Sleep `d`, then [`Interrupt::check`].
    pub fn pause(&self, d: Duration) -> Result<()> {
        thread::sleep(d);
        self.check()
    }
}
