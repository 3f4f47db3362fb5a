package node

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"syscall"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func isConnRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func cryptoRand(p []byte) (int, error) { return rand.Read(p) }
