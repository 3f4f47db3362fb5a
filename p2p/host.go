package p2p

import (
	"errors"
	"fmt"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/host/autorelay"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/protocol/holepunch"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

var log = logging.Logger("p2pkey/p2p")

// MemberTag is the connection-manager tag that protects connections to
// cluster members from being trimmed.
const MemberTag = "p2pkey-member"

// Relay client timing. go-libp2p's defaults (1 h backoff after a refused
// reservation, 30 s between polls of the relay list) suit a public network
// with many relays; a cluster has one or two, and the first reservation is
// often refused because the joiner is not a member yet.
const (
	relayBackoff     = 5 * time.Second
	relayMinInterval = 2 * time.Second
)

// DefaultRelayUpgradeGrace is how long a relayed connection to a peer
// stays open once a direct one exists (see WithRelayUpgradeGrace).
const DefaultRelayUpgradeGrace = 10 * time.Second

type options struct {
	listen       []string
	announce     []string
	connLow      int
	connHigh     int
	connGrace    time.Duration
	holePunch    bool
	metrics      bool
	metricsReg   prometheus.Registerer
	natPortMap   bool
	staticRelays []peer.AddrInfo
	relayMember  func(peer.ID) bool
	addrsChanged func()
	reachability network.Reachability
	upgradeGrace time.Duration
	extra        []libp2p.Option
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
// cost memory on small hosts). They register with
// prometheus.DefaultRegisterer; see WithMetricsRegisterer for another.
func WithMetrics(on bool) Option {
	return func(o *options) error { o.metrics = on; return nil }
}

// WithMetricsRegisterer turns go-libp2p's Prometheus metrics on and
// registers them with reg: swarm, transports, identify, AutoNAT,
// AutoRelay, hole punching, the resource manager and the event bus.
// Several hosts may share one registry (tests): a collector registered
// twice is kept once.
func WithMetricsRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) error {
		if reg == nil {
			return errors.New("metrics: nil registerer")
		}
		o.metrics, o.metricsReg = true, reg
		return nil
	}
}

// WithNATPortMap asks the gateway for a port mapping with UPnP or NAT-PMP
// (off by default: it talks to the LAN's router).
func WithNATPortMap(on bool) Option {
	return func(o *options) error { o.natPortMap = on; return nil }
}

// WithStaticRelays runs the relay v2 client (AutoRelay) with these relays
// as its only candidates. While the host is not publicly reachable it holds a
// reservation on them and advertises /p2p-circuit addresses through them.
func WithStaticRelays(relays []peer.AddrInfo) Option {
	return func(o *options) error {
		for _, r := range relays {
			if err := r.ID.Validate(); err != nil {
				return fmt.Errorf("static relay: %w", err)
			}
			if len(r.Addrs) == 0 {
				return fmt.Errorf("static relay %s: no addresses", r.ID)
			}
		}
		o.staticRelays = append([]peer.AddrInfo(nil), relays...)
		return nil
	}
}

// WithRelayService runs a circuit relay v2 service while the host is
// publicly reachable (AutoNAT v1 says public, or v2 confirmed an address). It serves only peers for which isMember is
// true, reservations and circuits alike, with no time or data limit on a
// circuit; strangers are refused. isMember is called from libp2p
// goroutines and must be safe for concurrent use and fast.
func WithRelayService(isMember func(peer.ID) bool) Option {
	return func(o *options) error {
		if isMember == nil {
			return errors.New("relay service: nil membership check")
		}
		o.relayMember = isMember
		return nil
	}
}

// WithAddrsChanged calls fn whenever the host's advertised addresses
// change (a new observed or relay address, a lost interface), so the node
// can announce them again. fn runs on one goroutine, one call at a time, and
// should return quickly.
func WithAddrsChanged(fn func()) Option {
	return func(o *options) error { o.addrsChanged = fn; return nil }
}

// WithReachability overrides AutoNAT: network.ReachabilityPublic or
// network.ReachabilityPrivate. For hosts whose reachability is known (a
// server with a public address), and for tests.
func WithReachability(r network.Reachability) Option {
	return func(o *options) error {
		switch r {
		case network.ReachabilityUnknown, network.ReachabilityPublic, network.ReachabilityPrivate:
			o.reachability = r
			return nil
		}
		return fmt.Errorf("reachability: unknown value %d", r)
	}
}

// WithRelayUpgradeGrace sets how long a peer's relayed connections stay
// open after a direct connection to it appears; then they are closed, so
// long-lived streams reopen on the direct one. A negative value keeps them.
func WithRelayUpgradeGrace(d time.Duration) Option {
	return func(o *options) error { o.upgradeGrace = d; return nil }
}

// WithLibp2pOptions appends raw go-libp2p options, for tests and embedders
// that need something this package does not expose.
func WithLibp2pOptions(opts ...libp2p.Option) Option {
	return func(o *options) error { o.extra = append(o.extra, opts...); return nil }
}

// New starts a libp2p host with the given identity.
//
// It listens on every listen address or fails: an address it cannot listen
// on (a port in use, by another p2pkey daemon or anything else, TCP or
// QUIC) is an error that wraps ErrListen and names the address.
//
// Besides the transports, it always runs AutoNAT (v1 client and service, v2
// client and server: a small cluster has no one else to ask), hole punching
// (DCUtR) and the relay transport. The options add port mapping, the relay
// client, the members-only relay service and address-change callbacks. The
// host it returns must be closed with its own Close.
func New(priv crypto.PrivKey, opts ...Option) (host.Host, error) {
	o := options{
		listen:       DefaultListenAddrs,
		connLow:      32,
		connHigh:     96,
		connGrace:    time.Minute,
		holePunch:    true,
		upgradeGrace: DefaultRelayUpgradeGrace,
	}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	listen := make([]ma.Multiaddr, 0, len(o.listen))
	for _, a := range o.listen {
		listen = append(listen, ma.StringCast(a)) // checked by WithListenAddrs or a constant
	}
	listen, err := probeAll(listen)
	if err != nil {
		return nil, err
	}
	o.listen = o.listen[:0]
	for _, a := range listen {
		o.listen = append(o.listen, a.String())
	}
	tracker := newPunchTracker()
	lopts, err := o.libp2pOptions(priv, tracker)
	if err != nil {
		return nil, err
	}
	inner, err := libp2p.New(lopts...)
	if err != nil {
		if len(listen) > 0 {
			return nil, fmt.Errorf("%w on %v: %w", ErrListen, listen, err)
		}
		return nil, fmt.Errorf("start libp2p host: %w", err)
	}
	st := newNATState(tracker)
	if err := st.start(inner, &o); err != nil {
		inner.Close()
		return nil, fmt.Errorf("start NAT tracking: %w", err)
	}
	h := &natHost{Host: inner, nat: st}
	if err := checkListening(h, listen); err != nil {
		h.Close()
		return nil, err
	}
	log.Infow("libp2p host started", "peer", h.ID(), "addrs", h.Addrs(),
		"relays", len(o.staticRelays), "relay_service", o.relayMember != nil, "nat_port_map", o.natPortMap)
	return h, nil
}

// libp2pOptions turns o into go-libp2p options.
func (o *options) libp2pOptions(priv crypto.PrivKey, tracker holepunch.EventTracer) ([]libp2p.Option, error) {
	cm, err := connmgr.NewConnManager(o.connLow, o.connHigh, connmgr.WithGracePeriod(o.connGrace))
	if err != nil {
		return nil, fmt.Errorf("connection manager: %w", err)
	}
	// As go-libp2p does by default: scale the limits to the machine and
	// add its per-service limits (relay, hole punching, AutoNAT, identify).
	limits := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&limits)
	rmOpts := relayConnLimits(o.staticRelays)
	if o.metrics {
		// go-libp2p registers the resource manager's metrics, but only a
		// resource manager it builds itself reports to them.
		str, err := rcmgr.NewStatsTraceReporter()
		if err != nil {
			return nil, fmt.Errorf("resource manager metrics: %w", err)
		}
		rmOpts = append(rmOpts, rcmgr.WithTraceReporter(str))
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rmOpts...)
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	lopts := []libp2p.Option{
		libp2p.Identity(priv),
		// The host listens as it starts (hole punching and AutoNAT set
		// themselves up from the addresses it has then); New probes every
		// TCP port first and checks afterwards that every address listens.
		libp2p.ListenAddrStrings(o.listen...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.DefaultTransports,
		libp2p.DefaultMuxers,
		libp2p.ConnectionManager(cm),
		libp2p.ResourceManager(rm),
		libp2p.UserAgent("p2pkey"),
		libp2p.EnableRelay(),
		libp2p.EnableAutoNATv2(),
		libp2p.EnableNATService(),
	}
	if o.holePunch {
		hp := holepunch.WithTracer(tracker)
		if o.metrics {
			// go-libp2p adds its metrics tracer first; WithTracer would
			// replace it, so pass both.
			var mopts []holepunch.MetricsTracerOption
			if o.metricsReg != nil {
				mopts = append(mopts, holepunch.WithRegisterer(o.metricsReg))
			}
			hp = holepunch.WithMetricsAndEventTracer(holepunch.NewMetricsTracer(mopts...), tracker)
		}
		lopts = append(lopts, libp2p.EnableHolePunching(hp))
	}
	switch {
	case !o.metrics:
		lopts = append(lopts, libp2p.DisableMetrics())
	case o.metricsReg != nil:
		lopts = append(lopts, libp2p.PrometheusRegisterer(o.metricsReg))
	}
	if o.natPortMap {
		lopts = append(lopts, libp2p.NATPortMap())
	}
	if len(o.staticRelays) > 0 {
		lopts = append(lopts, libp2p.EnableAutoRelayWithStaticRelays(o.staticRelays,
			autorelay.WithBackoff(relayBackoff),
			autorelay.WithMinInterval(relayMinInterval),
			autorelay.WithBootDelay(0)))
	}
	switch o.reachability {
	case network.ReachabilityPublic:
		lopts = append(lopts, libp2p.ForceReachabilityPublic())
	case network.ReachabilityPrivate:
		lopts = append(lopts, libp2p.ForceReachabilityPrivate())
	}
	if len(o.announce) > 0 {
		announce := make([]ma.Multiaddr, 0, len(o.announce))
		for _, a := range o.announce {
			announce = append(announce, ma.StringCast(a))
		}
		lopts = append(lopts, libp2p.AddrsFactory(func(in []ma.Multiaddr) []ma.Multiaddr {
			// The announced addresses replace the listen and observed
			// ones, but relay addresses stay: they are how peers reach
			// a host behind NAT.
			out := append([]ma.Multiaddr(nil), announce...)
			for _, a := range in {
				if isCircuitAddr(a) {
					out = append(out, a)
				}
			}
			return out
		}))
	}
	lopts = append(lopts, o.extra...)
	return lopts, nil
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
