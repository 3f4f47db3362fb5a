package p2p

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"

	"github.com/libp2p/go-libp2p/core/host"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// DefaultPort is the TCP and UDP port p2pkey listens on by default.
//
// 4766 is unassigned in IANA's service name and port number registry, for
// TCP and UDP alike, and no common daemon we know of uses it. The ports
// near it that are taken, and why not them: 4001 is kubo's (IPFS) swarm
// port, 4222 NATS, 4242 Nebula and Quassel, 4369 Erlang's epmd, 4500 IPsec
// NAT traversal, 4505-4506 Salt, 4510-4559 LocalStack, 4646-4648 Nomad,
// 4713 PulseAudio, 4789 VXLAN, 4822 Guacamole, 4873 Verdaccio.
const DefaultPort = 4766

// DefaultListenAddrs listens on TCP and QUIC, IPv4 and IPv6, on
// DefaultPort.
var DefaultListenAddrs = []string{
	"/ip4/0.0.0.0/tcp/4766",
	"/ip4/0.0.0.0/udp/4766/quic-v1",
	"/ip6/::/tcp/4766",
	"/ip6/::/udp/4766/quic-v1",
}

// ErrListen: the host could not listen on one of its listen addresses, for
// example because another process uses the port. New returns it wrapped,
// with the address and the cause (errors.Is(err, syscall.EADDRINUSE) holds
// for a port in use).
var ErrListen = errors.New("p2p: cannot listen")

// probeAll checks, before the host starts, that every TCP port of addrs is
// free, and returns the addresses to listen on.
//
// A TCP port is bound without SO_REUSEPORT, and that socket closed, before
// go-libp2p listens on it. go-libp2p's TCP transport listens with
// SO_REUSEPORT (so that it can dial from its listening port, which TCP hole
// punching and NAT port mapping rely on), and on Linux two sockets that both
// set it share a port: a second daemon on a taken port would start and
// receive half of the connections. The plain bind fails with EADDRINUSE
// whenever any other socket holds the port, reuseport or not. What remains
// is a window of a few microseconds between the probe and the listen in
// which a second daemon starting at the very same time could still share the
// port.
//
// An unspecified IPv6 address (/ip6/::) on a host without IPv6 is dropped
// (logged), so the defaults work there; any other failure is an error.
func probeAll(addrs []ma.Multiaddr) ([]ma.Multiaddr, error) {
	var out []ma.Multiaddr
	for _, a := range addrs {
		if err := probeTCP(a); err != nil {
			if noIPv6(a, err) {
				log.Infow("not listening on IPv6: this host has no IPv6", "addr", a, "err", err)
				continue
			}
			return nil, listenError(a, err)
		}
		out = append(out, a)
	}
	if len(out) == 0 && len(addrs) > 0 {
		return nil, fmt.Errorf("%w on any of %v", ErrListen, addrs)
	}
	return out, nil
}

// checkListening fails unless h listens on every address of addrs (a port 0
// matches any port). go-libp2p starts when any one address works and only
// logs the others, so a QUIC port in use would silently leave the host on
// TCP alone; the error names the address, and for a UDP port says why.
func checkListening(h host.Host, addrs []ma.Multiaddr) error {
	have := h.Network().ListenAddresses()
	for _, a := range addrs {
		if slices.ContainsFunc(have, func(l ma.Multiaddr) bool { return sameListen(a, l) }) {
			continue
		}
		if err := probeUDP(a); err != nil {
			if noIPv6(a, err) {
				log.Infow("not listening on IPv6: this host has no IPv6", "addr", a, "err", err)
				continue
			}
			return listenError(a, err)
		}
		return fmt.Errorf("%w on %s: the transport did not listen on it (see the log above)", ErrListen, a)
	}
	return nil
}

// sameListen reports whether got is a listener for want: the same
// protocols and values, a port 0 in want matching any port.
func sameListen(want, got ma.Multiaddr) bool {
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.Code() != g.Code() {
			return false
		}
		port := w.Code() == ma.P_TCP || w.Code() == ma.P_UDP
		if w.Value() != g.Value() && !(port && w.Value() == "0") {
			return false
		}
	}
	return true
}

// probeUDP binds a's UDP port and closes it again, returning the bind's
// error (EADDRINUSE when another socket holds it). Addresses without UDP, or
// with port 0, are not probed.
func probeUDP(a ma.Multiaddr) error {
	if len(a) < 2 || a[1].Code() != ma.P_UDP || a[1].Value() == "0" {
		return nil
	}
	network, hostport, err := manet.DialArgs(a[:2])
	if err != nil {
		return nil
	}
	c, err := net.ListenPacket(network, hostport)
	if err != nil {
		return err
	}
	return c.Close()
}

func listenError(a ma.Multiaddr, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w on %s: the port is in use by another process (another p2pkey daemon, or an IPFS node?): %w", ErrListen, a, err)
	}
	return fmt.Errorf("%w on %s: %w", ErrListen, a, err)
}

// probeTCP binds a's TCP port without SO_REUSEPORT and closes it again,
// and returns the bind's error: EADDRINUSE if any other socket holds the
// port. Addresses without TCP, or with port 0, are not probed.
func probeTCP(a ma.Multiaddr) error {
	if len(a) < 2 || a[1].Code() != ma.P_TCP {
		return nil
	}
	base := a[:2] // /ip4|ip6/HOST/tcp/PORT
	if base[1].Value() == "0" {
		return nil
	}
	network, hostport, err := manet.DialArgs(base)
	if err != nil {
		return nil // not an IP address: let go-libp2p say what is wrong
	}
	l, err := net.Listen(network, hostport)
	if err != nil {
		return err
	}
	return l.Close()
}

// noIPv6 reports whether err is the failure to listen on an unspecified
// IPv6 address of a host that has no IPv6.
func noIPv6(a ma.Multiaddr, err error) bool {
	if len(a) == 0 || a[0].Code() != ma.P_IP6 || !net.ParseIP(a[0].Value()).IsUnspecified() {
		return false
	}
	return errors.Is(err, syscall.EAFNOSUPPORT) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EPROTONOSUPPORT)
}
