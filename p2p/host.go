package p2p

import (
	"fmt"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	ma "github.com/multiformats/go-multiaddr"
)

var log = logging.Logger("p2pkey/p2p")

// MemberTag is the connection-manager tag that protects connections to
// cluster members from being trimmed.
const MemberTag = "p2pkey-member"

// DefaultListenAddrs listens on TCP and QUIC, IPv4 and IPv6, on port 4001.
var DefaultListenAddrs = []string{
	"/ip4/0.0.0.0/tcp/4001",
	"/ip4/0.0.0.0/udp/4001/quic-v1",
	"/ip6/::/tcp/4001",
	"/ip6/::/udp/4001/quic-v1",
}

type options struct {
	listen    []string
	announce  []string
	connLow   int
	connHigh  int
	connGrace time.Duration
	holePunch bool
	metrics   bool
	extra     []libp2p.Option
}

// Option configures New.
type Option func(*options) error

// WithListenAddrs sets the multiaddrs the host listens on.
func WithListenAddrs(addrs ...string) Option {
	return func(o *options) error {
		for _, a := range addrs {
			if _, err := ma.NewMultiaddr(a); err != nil {
				return fmt.Errorf("listen address %q: %w", a, err)
			}
		}
		o.listen = addrs
		return nil
	}
}

// WithAnnounceAddrs replaces the addresses the host advertises to peers.
func WithAnnounceAddrs(addrs ...string) Option {
	return func(o *options) error {
		for _, a := range addrs {
			if _, err := ma.NewMultiaddr(a); err != nil {
				return fmt.Errorf("announce address %q: %w", a, err)
			}
		}
		o.announce = addrs
		return nil
	}
}

// WithConnLimits sets the connection manager's watermarks and grace period.
func WithConnLimits(low, high int, grace time.Duration) Option {
	return func(o *options) error {
		if low < 0 || high < low {
			return fmt.Errorf("connection limits: need 0 <= low <= high, got %d, %d", low, high)
		}
		o.connLow, o.connHigh, o.connGrace = low, high, grace
		return nil
	}
}

// WithMetrics turns go-libp2p's Prometheus metrics on (off by default: they
// cost memory on small hosts).
func WithMetrics(on bool) Option {
	return func(o *options) error { o.metrics = on; return nil }
}

// WithLibp2pOptions appends raw go-libp2p options, for tests and embedders
// that need something this package does not expose.
func WithLibp2pOptions(opts ...libp2p.Option) Option {
	return func(o *options) error { o.extra = append(o.extra, opts...); return nil }
}

// New starts a libp2p host with the given identity.
func New(priv crypto.PrivKey, opts ...Option) (host.Host, error) {
	o := options{
		listen:    DefaultListenAddrs,
		connLow:   32,
		connHigh:  96,
		connGrace: time.Minute,
		holePunch: true,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	cm, err := connmgr.NewConnManager(o.connLow, o.connHigh, connmgr.WithGracePeriod(o.connGrace))
	if err != nil {
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	limiter := rcmgr.NewFixedLimiter(rcmgr.DefaultLimits.AutoScale())
	rm, err := rcmgr.NewResourceManager(limiter)
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	lopts := []libp2p.Option{
		libp2p.Identity(priv),
		libp2p.ListenAddrStrings(o.listen...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.DefaultTransports,
		libp2p.DefaultMuxers,
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.UserAgent("p2pkey"),
	}
	if o.holePunch {
		lopts = append(lopts, libp2p.EnableHolePunching())
	}
	if !o.metrics {
		lopts = append(lopts, libp2p.DisableMetrics())
	}
	if len(o.announce) > 0 {
		announce := make([]ma.Multiaddr, 0, len(o.announce))
		for _, a := range o.announce {
			announce = append(announce, ma.StringCast(a))
		}
		lopts = append(lopts, libp2p.AddrsFactory(func([]ma.Multiaddr) []ma.Multiaddr { return announce }))
	}
	lopts = append(lopts, o.extra...)
	h, err := libp2p.New(lopts...)
	if err != nil {
		return nil, fmt.Errorf("start libp2p host: %w", err)
	}
	log.Infow("libp2p host started", "peer", h.ID(), "addrs", h.Addrs())
	return h, nil
}

// Protect marks p as a cluster member so the connection manager never trims
// its connections.
func Protect(h host.Host, p peer.ID) { h.ConnManager().Protect(p, MemberTag) }

// Unprotect drops the member protection of p.
func Unprotect(h host.Host, p peer.ID) { h.ConnManager().Unprotect(p, MemberTag) }

// AddrInfoStrings returns the full /p2p/ multiaddrs of the host, the form an
// invite carries.
func AddrInfoStrings(h host.Host) []string {
	addrs, err := peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()})
	if err != nil {
		return nil
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}
