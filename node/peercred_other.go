//go:build !linux

package node

import (
	"errors"
	"net"
)

// peerCredOf is only implemented on Linux: elsewhere the key sockets refuse
// every connection.
func peerCredOf(*net.UnixConn) (peerCred, error) {
	return peerCred{}, errors.New("peer credentials are only read on Linux")
}
