//! Polis on virtual machines: the boot image (Debian's kernel, an initramfs with `polis-node` as
//! init), the GPT disk, and QEMU with a software TPM on the cluster bridge. Used by the VM tests
//! and by `polisctl launch --vm`.

mod cpio;
mod disk;
mod image;
mod qemu;

pub use cpio::{CpioWriter, Entry};
pub use disk::{luks_uuid, make_disk, DATA_OFFSET};
pub use image::{build_initramfs, resolve_modules, ImageError, Kernel, MODULES};
pub use qemu::{Vm, VmConfig, VmError};
