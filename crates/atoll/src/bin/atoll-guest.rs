//! The guest agent of VM-sandboxed pods (the `guest` crate), built beside `atoll` so the
//! agent finds it next to its own binary and puts it into the sandbox's initramfs.

fn main() {
    std::process::exit(guest::main(std::env::args_os().collect()));
}
