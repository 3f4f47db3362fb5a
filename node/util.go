package node

import (
	"bytes"
	"errors"
	"io"
	"syscall"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func isConnRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
