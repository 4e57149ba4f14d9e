//! Thin, safe wrappers over the socket system calls the data plane needs and std lacks
//! (peeking at an offset, discarding, send-buffer space, fd passing). Every function returns
//! `io::Result` and never panics on what the kernel reports. Sockets are created, bound and
//! connected through `socket2`; the rest is what it does not cover for a borrowed descriptor.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A new non-blocking socket (socket2 makes it close-on-exec too).
fn socket(domain: Domain, ty: Type, protocol: Option<Protocol>) -> io::Result<Socket> {
    Socket::new(domain, ty.nonblocking(), protocol)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int of the right size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live and sized for a c_int.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut _ as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(value)
}

/// Send buffer for translated connections. The guest's window is the free space in it, and the
/// kernel only grows a send buffer that a writer keeps full, which segment-sized writes never
/// do: without a large fixed buffer the window would stay at a few kilobytes.
const TCP_SEND_BUFFER: libc::c_int = 4 << 20;

/// Gives a translated TCP socket a large send buffer; `force` goes beyond `wmem_max`, which
/// needs `CAP_NET_ADMIN`.
pub fn set_tcp_send_buffer(fd: RawFd, force: bool) -> io::Result<()> {
    let option = if force {
        libc::SO_SNDBUFFORCE
    } else {
        libc::SO_SNDBUF
    };
    setsockopt_int(fd, libc::SOL_SOCKET, option, TCP_SEND_BUFFER)
}

/// Starts a non-blocking TCP connect; `EINPROGRESS` is success.
pub fn tcp_connect_nonblocking(dst: SocketAddr) -> io::Result<OwnedFd> {
    let socket = socket(Domain::for_address(dst), Type::STREAM, None)?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&SockAddr::from(dst)) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(socket.into()),
    }
}

/// Reads and clears `SO_ERROR`: the outcome of a non-blocking connect.
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)? {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is a live slice.
    cvt_size(unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// A socket's send buffer size as the kernel accounts it (`SO_SNDBUF`).
pub fn send_buffer_size(fd: RawFd) -> usize {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
        .unwrap_or(0)
        .max(0) as usize
}

/// Free space in a socket's send buffer of `sndbuf` bytes: minus what is queued (`SIOCOUTQ`,
/// not asked when the socket is `unused`), halved because the kernel also charges its
/// bookkeeping to the same budget.
pub fn send_space(fd: RawFd, sndbuf: usize, unused: bool) -> usize {
    if unused {
        return sndbuf / 2;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } == 0;
    if !ok {
        return sndbuf / 2;
    }
    sndbuf.saturating_sub(queued.max(0) as usize) / 2
}

pub fn set_peek_offset(fd: RawFd, offset: usize) -> io::Result<()> {
    let offset =
        libc::c_int::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset)
}

/// Whether `SO_PEEK_OFF` can be set on a TCP socket.
pub fn peek_offset_supported() -> bool {
    match socket(Domain::IPV4, Type::STREAM, None) {
        Ok(fd) => set_peek_offset(fd.as_raw_fd(), 0).is_ok(),
        Err(_) => false,
    }
}

/// Peeks into several buffers with one `recvmsg(MSG_PEEK)`.
pub fn peek_vectored(fd: RawFd, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero msghdr is valid; iov points at live buffers for the call's duration.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: msg is fully initialised above.
    cvt_size(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) })
}

/// Drops `len` bytes from the receive queue without copying them.
pub fn discard(fd: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC on a TCP socket the kernel copies nothing into the null buffer.
    cvt_size(unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            len,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    })
}

pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall; an error (already closed) is harmless.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Makes `close` send a RST.
pub fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// An unconnected UDP socket; with `ipv6`, an IPv6 one that reaches IPv4 destinations too
/// (as mapped addresses).
pub fn udp_socket(ipv6: bool) -> io::Result<OwnedFd> {
    if ipv6 {
        let socket = socket(Domain::IPV6, Type::DGRAM, None)?;
        socket.set_only_v6(false)?;
        Ok(socket.into())
    } else {
        Ok(socket(Domain::IPV4, Type::DGRAM, None)?.into())
    }
}

/// An ICMP (or ICMPv6) echo socket: a ping socket, or a raw one. The kernel computes the
/// ICMPv6 checksum of both kinds.
pub fn icmp_socket(raw: bool, ipv6: bool) -> io::Result<OwnedFd> {
    let ty = if raw { Type::RAW } else { Type::DGRAM };
    let socket = if ipv6 {
        socket(Domain::IPV6, ty, Some(Protocol::ICMPV6))?
    } else {
        socket(Domain::IPV4, ty, Some(Protocol::ICMPV4))?
    };
    Ok(socket.into())
}

/// One message of [`send_batches`]: a datagram, or with `segment` non-zero a run of datagrams
/// of `segment` bytes back to back in `data` (the last may be shorter), which the kernel cuts
/// apart (UDP GSO, `UDP_SEGMENT`), so the run costs one trip through the IP stack.
pub struct UdpMsg<'a> {
    pub addr: &'a socket2::SockAddr,
    pub data: &'a [u8],
    pub segment: u16,
}

/// Room for one `UDP_SEGMENT` control message, in u64s so it is aligned for `cmsghdr`.
const GSO_CMSG_WORDS: usize = 4;

/// Sends `msgs` on `fd` with one `sendmmsg`: how many messages the kernel took from the front,
/// or the error of the first one if it took none.
pub fn send_batches(fd: RawFd, msgs: &[UdpMsg<'_>]) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(space <= GSO_CMSG_WORDS * 8);
    let mut iovs: Vec<libc::iovec> = msgs
        .iter()
        .map(|m| libc::iovec {
            iov_base: m.data.as_ptr() as *mut libc::c_void,
            iov_len: m.data.len(),
        })
        .collect();
    let mut controls: Vec<[u64; GSO_CMSG_WORDS]> = vec![[0; GSO_CMSG_WORDS]; msgs.len()];
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(msgs.len());
    for ((m, iov), control) in msgs.iter().zip(iovs.iter_mut()).zip(controls.iter_mut()) {
        // SAFETY: an all-zero msghdr is valid (no control data, no flags).
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = m.addr.as_ptr() as *mut libc::c_void;
        h.msg_hdr.msg_namelen = m.addr.len();
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        if m.segment != 0 {
            h.msg_hdr.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_controllen = space as _;
            // SAFETY: the control buffer is aligned and has room for one u16 cmsg (checked
            // above), so the first header and its data lie inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, m.segment);
            }
        }
        headers.push(h);
    }
    // SAFETY: every header points at an iovec, payload, address and control buffer that
    // outlive the call.
    let n = cvt(unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })?;
    Ok(n as usize)
}

/// Sends a datagram to `dst`. An IPv4 destination through an IPv6 socket goes as a mapped
/// address.
pub fn send_to(fd: RawFd, data: &[u8], dst: SocketAddr) -> io::Result<usize> {
    let dst = match dst {
        SocketAddr::V4(v4) if socket_family(fd)? == libc::AF_INET6 => SocketAddr::V6(
            std::net::SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
        ),
        other => other,
    };
    let addr = socket2::SockAddr::from(dst);
    // SAFETY: data and addr are live for the call.
    cvt_size(unsafe {
        libc::sendto(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            addr.as_ptr() as *const libc::sockaddr,
            addr.len(),
        )
    })
}

/// The address family of a socket.
fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

/// Receives one datagram and its source (IPv4 peers of a dual-stack socket come as mapped
/// IPv6 addresses; the stack unmaps them).
pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: zeroed sockaddr_storage is valid; buffers are live.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let n = cvt_size(unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut ss as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    let from = match libc::c_int::from(ss.ss_family) {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6) into the storage.
            let sin6 = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                0,
            ))
        }
        _ => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage.
            let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)))
        }
    };
    Ok((n, from))
}

/// Accepts one connection, non-blocking, and returns it with its peer.
pub fn accept(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; on success we own the descriptor.
    let new = cvt(unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: fresh descriptor.
    let new = unsafe { OwnedFd::from_raw_fd(new) };
    let _ = setsockopt_int(new.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
    Ok(new)
}

/// A listening TCP socket (port-forward), `SO_REUSEADDR` set.
pub fn tcp_listen(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = socket(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    bind(&socket, addr)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A bound UDP socket (port-forward).
pub fn udp_bind(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = socket(Domain::for_address(addr), Type::DGRAM, None)?;
    bind(&socket, addr)?;
    Ok(socket.into())
}

/// Binds a socket; an IPv6 one to its IPv6 address only (`[::]:P` does not take IPv4's port
/// P too: a forward says which family it listens on).
fn bind(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&SockAddr::from(addr))
}

/// Sets a socket's send and receive buffer sizes (best effort).
pub fn set_buffer_sizes(fd: RawFd, send: usize, recv: usize) {
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, send as libc::c_int);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, recv as libc::c_int);
}

/// Writes several buffers with one call; returns bytes written.
pub fn writev(fd: RawFd, bufs: &[&[u8]]) -> io::Result<usize> {
    let iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: zeroed msghdr is valid; iov points at live buffers.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: msg fully initialised; MSG_NOSIGNAL avoids SIGPIPE on a vanished peer.
    cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// Receives one message carrying a file descriptor (`SCM_RIGHTS`). `Ok(None)` at end of stream
/// or when the message carried no descriptor.
pub fn recv_fd(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut data = [0u8; 64];
    Ok(recv_with_fd(fd, &mut data)?.1)
}

/// Receives up to `buf.len()` bytes and at most one descriptor (`SCM_RIGHTS`; extras are
/// closed) with one non-blocking `recvmsg`: the bytes read and the descriptor, if any.
pub fn recv_with_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: zeroed msghdr is valid; buffers are live for the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = size_of::<[u64; 16]>() as _;
    // SAFETY: msg initialised above.
    let n = cvt_size(unsafe {
        libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC)
    })?;
    let mut received: Vec<OwnedFd> = Vec::new();
    // SAFETY: iterating the control buffer the kernel filled, with the libc CMSG macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = payload / size_of::<RawFd>();
                let first = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(first.add(i));
                    received.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, received.into_iter().next()))
}

/// Sends `data` with one descriptor (`SCM_RIGHTS`) in one blocking `sendmsg`; the whole of
/// `data` or an error.
pub fn send_with_fd(fd: RawFd, data: &[u8], pass: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is valid; buffers are live for the call.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds one cmsghdr with room for one descriptor (space <= 32).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, pass);
    }
    loop {
        // SAFETY: msg fully initialised; MSG_NOSIGNAL avoids SIGPIPE on a vanished peer.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != data.len() {
            return Err(io::Error::other(
                "short write of a descriptor-passing message",
            ));
        }
        return Ok(());
    }
}

/// Socket type (`SO_TYPE`), to check what a client passed us.
pub fn socket_type(fd: RawFd) -> io::Result<libc::c_int> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)
}

/// Sets `O_NONBLOCK` on a descriptor.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) }).map(|_| ())
}

/// Lets another runnable thread on this CPU run first (`sched_yield`); returns at once if none.
pub fn yield_cpu() {
    // SAFETY: sched_yield has no preconditions and cannot fail on Linux.
    unsafe { libc::sched_yield() };
}
