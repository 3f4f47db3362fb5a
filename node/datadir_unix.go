//go:build unix

package node

import (
	"io/fs"
	"os"
	"syscall"
)

// openFlags opens a data directory (O_DIRECTORY) or identity file without
// blocking on a FIFO planted in its place.
func openFlags(isDir bool) int {
	flags := os.O_RDONLY | syscall.O_NONBLOCK
	if isDir {
		flags |= syscall.O_DIRECTORY
	}
	return flags
}

// fileOwner returns the uid that owns fi.
func fileOwner(fi fs.FileInfo) (uid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
