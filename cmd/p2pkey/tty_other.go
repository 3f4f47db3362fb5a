//go:build !linux

package main

import (
	"io"
	"os"
)

// isTTY reports whether w is a terminal: a character device other than
// /dev/null, as near as this platform lets the CLI tell without ioctls.
func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && f.Name() != os.DevNull && isTerminal(f)
}
