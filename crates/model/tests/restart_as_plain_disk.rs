//! Bug: a restarted node acknowledges writes into its own copy before it
//! learns its role.

use model::properties::{ONE_ACKNOWLEDGER, ON_PRIMARY_COPY};
use model::{Bounds, Protocol, Variant};

#[test]
fn restart_as_plain_disk_loses_acknowledged_writes() {
    let targets = [ON_PRIMARY_COPY, ONE_ACKNOWLEDGER];
    let run = Protocol::new(Variant::RestartAsPlainDisk, Bounds::SMALL).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}
