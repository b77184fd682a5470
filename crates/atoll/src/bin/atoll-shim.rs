//! The container supervisor (`agent::shim`) as a program of its own, built beside `atoll`:
//! the agent starts one per container, and executing this small binary costs a fraction
//! of executing `atoll shim` (the whole cluster manager: its relocations and the page faults
//! they cause, ~1.5 ms of CPU per container start).

fn main() {
    std::process::exit(agent::shim::main(std::env::args_os().skip(1)));
}
