//! Kernel objects: links, addresses, routes, sysctls.

pub mod addr;
pub mod bridge;
pub mod netlink;
pub mod sysctl;
pub mod veth;

/// Random bytes from the kernel (veth names, MACs); falls back to time and
/// pid mixing if getrandom is unavailable, which only weakens uniqueness.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: writes at most N bytes into our buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ ((std::process::id() as u128) << 64);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8;
        }
    }
    buf
}

/// A random unicast, locally administered MAC.
pub fn random_mac() -> Vec<u8> {
    let mut mac = random_bytes::<6>();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac.to_vec()
}
