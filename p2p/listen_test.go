package p2p

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/p2pkey/p2pkey/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
)

// listenAddr returns h's listen address of the given protocol (ma.P_TCP
// or ma.P_QUIC_V1).
func listenAddr(t *testing.T, h host.Host, code int) ma.Multiaddr {
	t.Helper()
	for _, a := range h.Network().ListenAddresses() {
		if _, err := a.ValueForProtocol(code); err == nil {
			return a
		}
	}
	t.Fatalf("%s listens on no address with protocol %d: %v", h.ID(), code, h.Network().ListenAddresses())
	return nil
}

// directListenAddrs is h's listen addresses but the relay transport's
// /p2p-circuit.
func directListenAddrs(h host.Host) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range h.Network().ListenAddresses() {
		if !isCircuitAddr(a) {
			out = append(out, a)
		}
	}
	return out
}

// TestPortInUse: a second host on a TCP or a QUIC port that a first host
// holds fails to start, with an error that names the address; once the
// first host is gone (after it had connections), the port can be taken
// again, as by a restarted daemon.
func TestPortInUse(t *testing.T) {
	first, err := New(newKey(t), WithListenAddrs("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { first.Close() }()
	tcp, quic := listenAddr(t, first, ma.P_TCP), listenAddr(t, first, ma.P_QUIC_V1)

	for _, tc := range []struct {
		name  string
		taken ma.Multiaddr
		other string
	}{
		// go-libp2p listens on TCP with SO_REUSEPORT: without the probe,
		// this second host would start and share the port.
		{"tcp", tcp, "/ip4/127.0.0.1/udp/0/quic-v1"},
		// go-libp2p's Listen succeeds when any address works: without
		// listening address by address, this host would start on TCP only.
		{"quic", quic, "/ip4/127.0.0.1/tcp/0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(newKey(t), WithListenAddrs(tc.other, tc.taken.String()))
			if err == nil {
				h.Close()
				t.Fatalf("a second host started on %s, which another host holds", tc.taken)
			}
			if !errors.Is(err, ErrListen) || !errors.Is(err, syscall.EADDRINUSE) || !testkit.ErrorSays(err, tc.taken.String()) {
				t.Fatalf("error %q: want ErrListen and EADDRINUSE, naming %s", err, tc.taken)
			}
		})
	}

	// Give the first host a connection, so its port has TIME_WAIT
	// sockets after it closes, then take its ports.
	peer2 := newTestHost(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := peer2.Connect(ctx, addrInfo(first)); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := New(newKey(t), WithListenAddrs(tcp.String(), quic.String()))
	if err != nil {
		t.Fatalf("a port freed by a closed host: %v", err)
	}
	defer again.Close()
	if got := directListenAddrs(again); len(got) != 2 {
		t.Fatalf("listening on %v, want %s and %s", got, tcp, quic)
	}
}

// TestListenAllAddrs: New listens on every address it is given.
func TestListenAllAddrs(t *testing.T) {
	h := newTestHost(t, WithListenAddrs("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1", "/ip6/::1/tcp/0"))
	var protos []string
	for _, a := range directListenAddrs(h) {
		protos = append(protos, a[0].Protocol().Name+"/"+a[1].Protocol().Name)
	}
	slices.Sort(protos)
	if fmt.Sprint(protos) != "[ip4/tcp ip4/udp ip6/tcp]" && fmt.Sprint(protos) != "[ip4/tcp ip4/udp]" {
		t.Fatalf("listening on %v", h.Network().ListenAddresses())
	}
}

// TestDefaultListenAddrs: the defaults use DefaultPort, TCP and QUIC, on
// IPv4 and IPv6, and not kubo's 4001.
func TestDefaultListenAddrs(t *testing.T) {
	want := []string{
		fmt.Sprintf("/ip4/0.0.0.0/tcp/%d", DefaultPort),
		fmt.Sprintf("/ip4/0.0.0.0/udp/%d/quic-v1", DefaultPort),
		fmt.Sprintf("/ip6/::/tcp/%d", DefaultPort),
		fmt.Sprintf("/ip6/::/udp/%d/quic-v1", DefaultPort),
	}
	if !slices.Equal(DefaultListenAddrs, want) || DefaultPort == 4001 {
		t.Fatalf("DefaultListenAddrs = %v, want %v", DefaultListenAddrs, want)
	}
}

// TestCountConns: direct connections are counted as direct, on both
// sides.
func TestCountConns(t *testing.T) {
	a, b := newTestHost(t), newTestHost(t)
	if got := CountConns(a); got != (ConnCounts{}) {
		t.Fatalf("no connections yet: %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, addrInfo(b)); err != nil {
		t.Fatal(err)
	}
	if got := CountConns(a); got != (ConnCounts{Direct: 1}) {
		t.Fatalf("dialer: %+v", got)
	}
	eventually(t, 5*time.Second, "the listener to count the connection", func() bool {
		return CountConns(b) == ConnCounts{Direct: 1}
	})
}

// TestMetricsRegisterer: go-libp2p's metrics land in the registry given,
// including the resource manager's.
func TestMetricsRegisterer(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newTestHost(t, WithMetricsRegisterer(reg))
	b := newTestHost(t, WithMetricsRegisterer(reg)) // a second host on one registry
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, addrInfo(b)); err != nil {
		t.Fatal(err)
	}
	has := func(prefix string) bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), prefix) {
				return true
			}
		}
		return false
	}
	for _, prefix := range []string{"libp2p_swarm_", "libp2p_rcmgr_"} {
		eventually(t, 5*time.Second, prefix+" metrics in the registry", func() bool { return has(prefix) })
	}
	if err := WithMetricsRegisterer(nil)(&options{}); err == nil {
		t.Fatal("a nil registerer was accepted")
	}
}
