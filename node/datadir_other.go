//go:build !unix

package node

import (
	"io/fs"
	"os"
)

// openFlags: without O_DIRECTORY, the caller checks the type after opening.
func openFlags(bool) int { return os.O_RDONLY }

// fileOwner: ownership is not a uid outside unix; only the mode is checked.
func fileOwner(fs.FileInfo) (int, bool) { return 0, false }
