//! Where what the daemon's parts observe becomes metrics: the data path's counters on
//! `twill_udp_*`.

use std::sync::Arc;

use twill_api::Metrics;
use twill_datapath::{Counters, Direction, DropReason};

/// The udp data path's [`Counters`], on the daemon's metrics (a newtype: the orphan
/// rule forbids implementing the data path's trait on the API's type here).
pub struct UdpCounters(pub Arc<Metrics>);

impl Counters for UdpCounters {
    fn packets(&self, direction: Direction, packets: u64, bytes: u64) {
        let direction = match direction {
            Direction::In => twill_api::Direction::In,
            Direction::Out => twill_api::Direction::Out,
        };
        self.0.udp_packets(direction, packets, bytes);
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        self.0.udp_drops_by(reason.as_str(), n);
    }
}
