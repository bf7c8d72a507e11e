//! Keeps the containers' listening sockets across a restart of gantry through systemd's file
//! descriptor store (`FDSTORE=1`, `FileDescriptorStoreMax=` in the unit).
//!
//! A container sees its socket through a bind mount of the socket file, and a bind mount
//! pins the file's inode: a socket bound anew at the same path after a restart would be a
//! new inode the running container cannot reach. So the listening socket itself must
//! survive: gantry hands each one to systemd when it creates it, and systemd passes them back
//! at the next start (`LISTEN_FDS`, named `kawaflow-<container name>`). Without systemd
//! (no `NOTIFY_SOCKET`) nothing is stored and a restart makes new sockets, which running
//! containers see only after their own restart.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::socket::{
    sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};

const PREFIX: &str = "kawaflow-";

fn notify_socket() -> Option<UnixAddr> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = path.as_bytes();
    match bytes.first() {
        Some(b'@') => UnixAddr::new_abstract(&bytes[1..]).ok(),
        Some(b'/') => UnixAddr::new(bytes).ok(),
        _ => None,
    }
}

fn send(message: &str, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let Some(addr) = notify_socket() else {
        return Ok(());
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw.iter().map(|r| ControlMessage::ScmRights(r)).collect();
    let iov = [IoSlice::new(message.as_bytes())];
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(())
}

/// Hands the listening socket of container `name` to systemd's store.
pub fn store(name: &str, fd: BorrowedFd<'_>) {
    let msg = format!("FDSTORE=1\nFDNAME={PREFIX}{name}\n");
    if let Err(e) = send(&msg, Some(fd)) {
        tracing::warn!(container = %name, error = %e, "cannot hand the container socket to systemd");
    }
}

/// Takes the socket of container `name` out of systemd's store.
pub fn remove(name: &str) {
    let msg = format!("FDSTOREREMOVE=1\nFDNAME={PREFIX}{name}\n");
    if let Err(e) = send(&msg, None) {
        tracing::debug!(container = %name, error = %e, "cannot remove a socket from systemd's store");
    }
}

/// The container sockets systemd passed to this process, by container name.
pub fn inherited() -> HashMap<String, OwnedFd> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the descriptors systemd passed");
            return HashMap::new();
        }
    };
    let mut out = HashMap::new();
    for (raw, name) in fds {
        let Some(container) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID is ours) and
        // nothing else in gantry takes it: it is owned from here on, exactly once.
        #[allow(unsafe_code)]
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        out.insert(container.to_string(), fd);
    }
    out
}
