//! QEMU guests (placeholder, filled in next).

/// Options for [`QemuGuest::spawn`].
#[derive(Debug)]
pub struct QemuOptions;
/// Output of a guest run.
#[derive(Debug)]
pub struct GuestOutput;
/// A QEMU guest.
#[derive(Debug)]
pub struct QemuGuest;
