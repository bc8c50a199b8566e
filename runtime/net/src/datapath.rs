//! The file descriptors of a userspace data path: a layer-3 TUN device and a UDP
//! socket that moves datagrams in batches (`recvmmsg` / `sendmmsg`). Both are
//! non-blocking; [`wait_readable`] waits for either with a timeout so the data-path
//! threads can look at their control channel between batches.
//!
//! Buffers are owned by the caller and reused: a [`RecvBatch`] is allocated once per
//! thread and nothing here allocates per packet.
//!
//! The crate's unsafe code lives here, wrapped once in these small safe types.
#![allow(
    unsafe_code,
    reason = "raw ioctls and mmsg system calls, each block with its SAFETY comment"
)]

use std::ffi::CString;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A layer-3 TUN device without packet-information header (`IFF_TUN | IFF_NO_PI`),
/// like flannel's `flannel0`. It is persistent (`TUNSETPERSIST`): the device, its
/// addresses and its routes stay when the descriptor closes, so a restarted twill
/// attaches to the same device and the pods' routes never go away. While no process
/// holds it, the kernel drops what is sent into it (counted as the device's TX drops).
/// Deleting the device (`ip link del`) is what removes it.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    tso: bool,
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 203, int)` in `<linux/if_tun.h>`.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_VNET_HDR: libc::c_int = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;

impl Tun {
    /// Create (or attach to) the TUN device `name` in the calling thread's network
    /// namespace, non-blocking, with a `virtio_net_hdr` before every packet
    /// (`twill_datapath::offload::VnetHdr`) and, where the kernel allows, TCP segmentation
    /// offload: reads may then be TCP super-packets of up to 64 KiB.
    pub fn open(name: &str) -> io::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad TUN device name {name:?}"),
            ));
        }
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: a valid NUL-terminated path; the returned descriptor is checked.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("open /dev/net/tun: {e}")));
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI | IFF_VNET_HDR) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads an `ifreq`, which `IfReq` lays out; it lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        // SAFETY: TUNSETPERSIST takes a flag by value.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, libc::c_ulong::from(1u8)) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("TUNSETPERSIST {name}: {e}"),
            ));
        }
        // SAFETY: TUNSETOFFLOAD takes the offload flags by value.
        let tso = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(TUN_F_CSUM | TUN_F_TSO4),
            )
        } == 0;
        Ok(Tun {
            fd,
            name: name.to_owned(),
            tso,
        })
    }

    /// Whether the kernel hands over TCP super-packets (TSO on the device).
    pub fn tso(&self) -> bool {
        self.tso
    }

    /// Write one packet made of `parts` (its `virtio_net_hdr` first).
    pub fn writev(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: IoSlice is ABI-compatible with iovec; each points at live memory.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                parts.as_ptr().cast(),
                i32::try_from(parts.len()).unwrap_or(i32::MAX),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one packet with its `virtio_net_hdr`; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Bind a non-blocking UDP socket for a data path, with UDP GRO on where the kernel
/// has it (datagrams of one sender then arrive several per buffer, see
/// [`RecvBatch::segment_size`]).
pub fn bind_udp(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    // Failure (an old kernel) only means one datagram per buffer.
    set_int_option(&socket, SOL_UDP, UDP_GRO, 1);
    // A deep queue both ways: at 10 Gbit/s the default ~200 KiB holds a few GRO
    // messages, and every datagram the kernel drops there is a TCP retransmission of
    // a pod. The FORCE variants (as root) may exceed net.core.[rw]mem_max.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !set_int_option(&socket, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
            set_int_option(&socket, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    Ok(socket)
}

/// Whether the kernel can segment UDP sends on this socket (UDP GSO, Linux ≥ 4.18):
/// `getsockopt(UDP_SEGMENT)` answers only where it exists. Elsewhere a segment size
/// would be ignored and a 64 KiB datagram sent.
pub fn udp_gso_supported(socket: &UdpSocket) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid int buffer and its length.
    unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        ) == 0
    }
}

/// The data path socket's receive and send buffer size.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// `setsockopt` with an int value; whether the kernel took it.
fn set_int_option(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: a valid int option value of the declared size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Room for one control message with an int (UDP_GRO) or u16 (UDP_SEGMENT), aligned.
type Control = [u64; 4];

/// Wait until one of `fds` is readable or `timeout` passes; which are readable.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs.
    let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(polls
        .iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
        .collect())
}

/// Reusable buffers for receiving up to `capacity` datagrams with one `recvmmsg`:
/// datagram `i` lands at `i * slot` in one arena.
pub struct RecvBatch {
    slot: usize,
    arena: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    controls: Vec<Control>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside point into the batch's own vectors, which move with it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Buffers for `capacity` datagrams of at most `slot` bytes.
    pub fn new(capacity: usize, slot: usize) -> RecvBatch {
        RecvBatch {
            slot,
            arena: vec![0; capacity * slot],
            iovecs: Vec::with_capacity(capacity),
            // SAFETY: sockaddr_in is a plain C struct; all-zero is a valid value.
            addrs: vec![unsafe { mem::zeroed() }; capacity],
            controls: vec![[0; 4]; capacity],
            // SAFETY: mmsghdr is a plain C struct (null pointers, zero lengths); all-zero
            // is a valid value, and recv() points it at the buffers before each use.
            headers: vec![unsafe { mem::zeroed() }; capacity],
        }
    }

    /// The arena, whose first `n * slot()` bytes hold the last batch.
    pub fn arena(&self) -> &[u8] {
        &self.arena
    }

    /// The arena, mutable (to pack the received messages back to back).
    pub fn arena_mut(&mut self) -> &mut [u8] {
        &mut self.arena
    }

    /// Bytes per slot.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// How many datagrams fit.
    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Receive up to `capacity` datagrams without blocking. Returns how many arrived;
    /// `datagram_len(i)`, `from(i)` and `truncated(i)` describe each. 0 when none is queued.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let cap = self.capacity();
        self.iovecs.clear();
        let base = self.arena.as_mut_ptr();
        for i in 0..cap {
            self.iovecs.push(libc::iovec {
                // SAFETY: slot i lies inside the arena (capacity * slot bytes).
                iov_base: unsafe { base.add(i * self.slot) }.cast(),
                iov_len: self.slot,
            });
        }
        for i in 0..cap {
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = mem::size_of::<Control>();
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of this batch, sized as declared.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_fd().as_raw_fd(),
                self.headers.as_mut_ptr(),
                cap as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    /// The length of datagram `i` of the last batch.
    pub fn datagram_len(&self, i: usize) -> usize {
        (self.headers[i].msg_len as usize).min(self.slot)
    }

    /// Whether datagram `i` was larger than a slot (and cut).
    pub fn truncated(&self, i: usize) -> bool {
        self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// With UDP GRO, message `i` may hold several datagrams of the sender, each this
    /// long (the last possibly shorter); `None` for a single datagram.
    pub fn segment_size(&self, i: usize) -> Option<usize> {
        let h = &self.headers[i].msg_hdr;
        if h.msg_controllen < mem::size_of::<libc::cmsghdr>() {
            return None;
        }
        // SAFETY: the kernel wrote a cmsghdr at the start of this message's control
        // buffer (msg_controllen says how much); we read it unaligned-safely.
        let cmsg: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(self.controls[i].as_ptr().cast()) };
        if cmsg.cmsg_level != SOL_UDP || cmsg.cmsg_type != UDP_GRO {
            return None;
        }
        let data_at = mem::size_of::<libc::cmsghdr>();
        // SAFETY: the int payload follows the header inside the 32-byte buffer.
        let size: libc::c_int = unsafe {
            std::ptr::read_unaligned(self.controls[i].as_ptr().cast::<u8>().add(data_at).cast())
        };
        usize::try_from(size).ok().filter(|s| *s > 0)
    }

    /// The sender of datagram `i`.
    pub fn from(&self, i: usize) -> SocketAddrV4 {
        let a = &self.addrs[i];
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        )
    }
}

/// Reusable buffers for sending a batch of datagrams with `sendmmsg`.
pub struct SendBatch {
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    controls: Vec<Control>,
    segments: Vec<u16>,
    headers: Vec<libc::mmsghdr>,
    refused: Vec<usize>,
}

// SAFETY: the raw pointers are rebuilt on every send from the caller's slices.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    /// Empty buffers; they grow to the largest batch sent and are reused.
    pub fn new() -> SendBatch {
        SendBatch {
            iovecs: Vec::new(),
            addrs: Vec::new(),
            controls: Vec::new(),
            segments: Vec::new(),
            headers: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Send each `(payload, destination)` as one datagram, as few syscalls as the
    /// kernel allows. Returns how many were sent; a datagram the kernel refuses (e.g.
    /// no route) is skipped and counted as not sent, not retried.
    pub fn send<'a>(
        &mut self,
        socket: &UdpSocket,
        datagrams: impl Iterator<Item = (&'a [u8], SocketAddrV4)>,
    ) -> io::Result<usize> {
        self.send_segmented(socket, datagrams.map(|(p, d)| (p, d, 0)))
    }

    /// The messages (by position) the kernel refused in the last send.
    pub fn refused(&self) -> &[usize] {
        &self.refused
    }

    /// As [`SendBatch::send`], but each message may be several datagrams to the same
    /// destination: with a segment size `s > 0`, the kernel cuts the payload into
    /// datagrams of `s` bytes (the last shorter), UDP GSO. Returns how many messages
    /// were sent.
    pub fn send_segmented<'a>(
        &mut self,
        socket: &UdpSocket,
        messages: impl Iterator<Item = (&'a [u8], SocketAddrV4, u16)>,
    ) -> io::Result<usize> {
        self.iovecs.clear();
        self.addrs.clear();
        self.segments.clear();
        for (payload, dst, segment) in messages {
            self.segments.push(segment);
            self.iovecs.push(libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            });
            self.addrs.push(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: dst.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*dst.ip()).to_be(),
                },
                sin_zero: [0; 8],
            });
        }
        let count = self.iovecs.len();
        // SAFETY: mmsghdr is a plain C struct; all-zero is valid.
        self.headers.resize(count, unsafe { mem::zeroed() });
        self.controls.resize(count, [0; 4]);
        for i in 0..count {
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if self.segments[i] > 0 {
                let cmsg = libc::cmsghdr {
                    // SAFETY: CMSG_LEN only computes a length.
                    cmsg_len: unsafe { libc::CMSG_LEN(2) } as _,
                    cmsg_level: SOL_UDP,
                    cmsg_type: UDP_SEGMENT,
                };
                let buf = self.controls[i].as_mut_ptr().cast::<u8>();
                // SAFETY: the 32-byte buffer holds the header and the u16 after it.
                unsafe {
                    std::ptr::write_unaligned(buf.cast(), cmsg);
                    std::ptr::write_unaligned(
                        buf.add(mem::size_of::<libc::cmsghdr>()).cast(),
                        self.segments[i],
                    );
                }
                h.msg_control = buf.cast();
                // SAFETY: CMSG_SPACE only computes a length.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        self.refused.clear();
        let mut sent = 0;
        let mut next = 0;
        while next < count {
            // SAFETY: headers[next..count] point at the caller's payloads (alive for
            // this call) and at this batch's address and iovec arrays.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_fd().as_raw_fd(),
                    self.headers[next..].as_mut_ptr(),
                    (count - next) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        // The socket buffer is full: wait for room rather than drop.
                        let fd = socket.as_fd().as_raw_fd();
                        let mut p = libc::pollfd {
                            fd,
                            events: libc::POLLOUT,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd.
                        unsafe { libc::poll(&mut p, 1, 100) };
                        continue;
                    }
                    // This message was refused (EHOSTUNREACH, EMSGSIZE, EIO for a GSO
                    // send the device cannot do…): skip it, say which.
                    _ => {
                        self.refused.push(next);
                        next += 1;
                        continue;
                    }
                }
            }
            sent += n as usize;
            next += n as usize;
        }
        Ok(sent)
    }
}

/// Give the heap's free pages back to the kernel (glibc's `malloc_trim`): after a burst
/// of thousands of peers, the transient copies (the store's listing, the batches
/// handed to the plugin) are freed, but glibc keeps their pages resident. A no-op
/// where the C library has no `malloc_trim`.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a plain integer and touches only the allocator's own
    // state, which it locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_move_datagrams_over_loopback() {
        let a = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind a");
        let b = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind b");
        let to = match b.local_addr().expect("addr") {
            std::net::SocketAddr::V4(v4) => v4,
            other => panic!("not v4: {other}"),
        };
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let mut send = SendBatch::new();
        let sent = send
            .send(&a, payloads.iter().map(|p| (p.as_slice(), to)))
            .expect("send");
        assert_eq!(sent, 10);
        let fds = [b.as_raw_fd()];
        assert_eq!(
            wait_readable(&fds, Duration::from_secs(2)).expect("poll"),
            vec![true]
        );
        let mut recv = RecvBatch::new(8, 2048);
        let mut got = Vec::new();
        while got.len() < 10 {
            let n = recv.recv(&b).expect("recv");
            for i in 0..n {
                let from = recv.from(i);
                assert_eq!(from.ip(), &Ipv4Addr::LOCALHOST);
                assert!(!recv.truncated(i));
                let start = i * recv.slot();
                got.push(recv.arena()[start..start + recv.datagram_len(i)].to_vec());
            }
            if n == 0 {
                wait_readable(&fds, Duration::from_secs(2)).expect("poll");
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn a_segmented_send_arrives_as_its_datagrams() {
        let a = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind a");
        let b = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind b");
        let to = match b.local_addr().expect("addr") {
            std::net::SocketAddr::V4(v4) => v4,
            other => panic!("not v4: {other}"),
        };
        let payload: Vec<u8> = (0..450u32).map(|i| i as u8).collect();
        let mut send = SendBatch::new();
        let sent = send
            .send_segmented(&a, std::iter::once((payload.as_slice(), to, 100)))
            .expect("send");
        assert_eq!(sent, 1);
        let mut recv = RecvBatch::new(8, 65536);
        let mut datagrams = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while datagrams.len() < 5 && std::time::Instant::now() < deadline {
            wait_readable(&[b.as_raw_fd()], Duration::from_millis(200)).expect("poll");
            let n = recv.recv(&b).expect("recv");
            for i in 0..n {
                let data = &recv.arena()[i * recv.slot()..i * recv.slot() + recv.datagram_len(i)];
                let size = recv.segment_size(i).unwrap_or(data.len());
                datagrams.extend(data.chunks(size).map(<[u8]>::to_vec));
            }
        }
        let sizes: Vec<usize> = datagrams.iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 100, 100, 50]);
        assert_eq!(datagrams.concat(), payload);
    }

    #[test]
    fn datagrams_longer_than_a_slot_are_flagged() {
        let a = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind a");
        let b = bind_udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind b");
        a.send_to(&[7; 300], b.local_addr().expect("addr"))
            .expect("send");
        wait_readable(&[b.as_raw_fd()], Duration::from_secs(2)).expect("poll");
        let mut recv = RecvBatch::new(4, 128);
        assert_eq!(recv.recv(&b).expect("recv"), 1);
        assert!(recv.truncated(0));
        assert_eq!(recv.datagram_len(0), 128);
    }
}
