//! Many datagrams per system call (`recvmmsg`/`sendmmsg`) for the UDP listener. Under load a
//! client keeps hundreds of queries in flight; answering the ones the reply cache knows in one
//! `sendmmsg` after one `recvmmsg` costs two system calls per batch instead of two per query.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams moved per system call at most.
pub const BATCH: usize = 32;
/// Receive space per datagram; longer ones are cut by the kernel and then fail to parse
/// (FORMERR), as with a single `recv_from`.
pub const DATAGRAM: usize = 4096;

/// A peer's address as the kernel gave it, to send a reply back without converting it.
#[derive(Clone, Copy)]
pub struct RawPeer {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Default for RawPeer {
    fn default() -> Self {
        Self {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
            addr: unsafe { zeroed() },
            len: 0,
        }
    }
}

impl RawPeer {
    /// The address as a `SocketAddr` (None for a family other than IPv4/IPv6).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let storage = &self.addr;
        match i32::from(storage.ss_family) {
            libc::AF_INET if self.len as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family checked, length suffices);
                // sockaddr_storage is large and aligned enough for it.
                let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if self.len as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Received datagrams: `len()` of them after [`RecvBatch::recv`].
pub struct RecvBatch {
    data: Vec<u8>,
    lens: [usize; BATCH],
    peers: [RawPeer; BATCH],
    count: usize,
}

impl RecvBatch {
    pub fn new() -> Self {
        let empty = RawPeer::default();
        Self {
            data: vec![0; BATCH * DATAGRAM],
            lens: [0; BATCH],
            peers: [empty; BATCH],
            count: 0,
        }
    }

    /// Receives what is waiting on non-blocking `fd`, up to [`BATCH`] datagrams; WouldBlock
    /// when there is nothing.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        // SAFETY: plain C structs, zero is valid; every pointer set below points into `self`,
        // which outlives the call, with the lengths of the memory it points to.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, chunk) in self.data.chunks_exact_mut(DATAGRAM).enumerate() {
            iovs[i] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&mut self.peers[i].addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
        }
        // SAFETY: see above.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, msg) in msgs.iter().enumerate().take(n) {
            self.lens[i] = (msg.msg_len as usize).min(DATAGRAM);
            self.peers[i].len = msg.msg_hdr.msg_namelen;
        }
        self.count = n;
        Ok(n)
    }

    /// Datagram `i` (below what the last `recv` returned) and its sender.
    pub fn get(&self, i: usize) -> (&[u8], RawPeer) {
        debug_assert!(i < self.count);
        let start = i * DATAGRAM;
        (&self.data[start..start + self.lens[i]], self.peers[i])
    }
}

/// Sends `replies[..]` from non-blocking `fd` with as few `sendmmsg` calls as it takes; returns
/// how many were sent from the front (fewer when the socket buffer is full: WouldBlock if none).
pub fn send_batch(fd: RawFd, replies: &[(Vec<u8>, RawPeer)]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < replies.len() {
        let chunk = &replies[sent..replies.len().min(sent + BATCH)];
        // SAFETY: zeroed C structs; the pointers below point into `chunk`, which outlives the
        // call; the kernel only reads through them (msg_name is `*mut` in the C API only).
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (reply, peer)) in chunk.iter().enumerate() {
            iovs[i] = libc::iovec {
                iov_base: reply.as_ptr() as *mut libc::c_void,
                iov_len: reply.len(),
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = &peer.addr as *const libc::sockaddr_storage as *mut libc::c_void;
            hdr.msg_namelen = peer.len;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
        }
        // SAFETY: see above.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if sent > 0 { Ok(sent) } else { Err(err) };
        }
        if n == 0 {
            break;
        }
        sent += n as usize;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn many_datagrams_in_and_the_replies_back_out() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        assert_eq!(
            batch.recv(server.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u8 {
            client
                .send_to(&[i; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let mut replies = Vec::new();
        let mut got = 0;
        while got < 40 {
            let n = batch.recv(server.as_raw_fd()).unwrap();
            assert!(n <= BATCH);
            for i in 0..n {
                let (data, peer) = batch.get(i);
                assert_eq!(data, [got as u8; 3]);
                assert_eq!(peer.socket_addr(), Some(client.local_addr().unwrap()));
                replies.push((vec![data[0], 0xaa], peer));
                got += 1;
            }
        }
        assert_eq!(send_batch(server.as_raw_fd(), &replies).unwrap(), 40);
        let mut buf = [0u8; 16];
        for i in 0..40u8 {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], [i, 0xaa]);
            assert_eq!(from, server.local_addr().unwrap());
        }
    }
}
