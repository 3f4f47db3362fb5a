//go:build linux

package node

import (
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxPeerGroups bounds the supplementary groups read from a peer (the
// kernel's NGROUPS_MAX is 65536).
const maxPeerGroups = 65536

// peerCredOf returns the credentials the kernel recorded for the process at
// the other end of c when it connected (SO_PEERCRED), with its
// supplementary groups (SO_PEERGROUPS, Linux 4.13 and later; none before).
func peerCredOf(c *net.UnixConn) (peerCred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return peerCred{}, err
	}
	var cred peerCred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		u, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			cerr = fmt.Errorf("SO_PEERCRED: %w", err)
			return
		}
		cred = peerCred{PID: int(u.Pid), UID: u.Uid, GID: u.Gid, known: true}
		cred.Groups, _ = peerGroups(int(fd))
	})
	if err == nil {
		err = cerr
	}
	return cred, err
}

// peerGroups reads SO_PEERGROUPS. The kernel answers ERANGE with the size it
// needs when the buffer is too small.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && size/4 > uint32(len(buf)) && size/4 <= maxPeerGroups:
			buf = make([]uint32, size/4)
			continue
		case errno != 0:
			return nil, errno
		}
		return buf[:size/4], nil
	}
}
