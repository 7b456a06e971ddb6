//! Node-local storage: the node root's layout, the ESP's files, and the data partition.

mod actor;
mod data;
mod esp;
mod layout;

pub use actor::{
    GetEsp, MountExisting, MountNew, NewKeys, RefuseFormatted, Storage, StorageConfig, StorageError,
};
pub use data::{
    check_volume_header, close_data_partition, DataBackend, DataError, Previous, UnlockKey,
    VolumeKey, KEY_LEN,
};
pub use esp::{boot_directory, decode_envelope, Esp, EspError};
pub use layout::NodeRoot;
