package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/p2pkey/p2pkey/p2p"
)

// Config configures a Node. Start from DefaultConfig.
type Config struct {
	// DataDir holds the identity, the Raft state and the control socket.
	DataDir string
	// ListenAddrs are the libp2p multiaddrs to listen on.
	ListenAddrs []string
	// AnnounceAddrs, if set, replace the addresses advertised to peers.
	AnnounceAddrs []string
	// Relays are /p2p/ multiaddrs of members that relay for this node while
	// it is not publicly reachable (rule N1). A joiner also takes the relays
	// named in its invite; both are remembered for restarts.
	Relays []string
	// RelayService relays for other members (never for strangers) while
	// this node is publicly reachable.
	RelayService bool
	// NATPortMap asks the LAN's router for a port mapping (UPnP, NAT-PMP).
	NATPortMap bool
	// MDNS finds members on the local network with no configuration (N2).
	MDNS bool
	// Reachability overrides AutoNAT: "public", "private", or "" (detect).
	Reachability string

	// Bootstrap creates a new cluster with this node as its only member. It
	// is ignored when DataDir already holds Raft state.
	Bootstrap bool
	// Join is an invite token. It is ignored when DataDir already holds Raft
	// state.
	Join string
	// JoinTimeout bounds the whole join, from dialling to being a voter.
	JoinTimeout time.Duration

	// ControlSocket serves the control API on DataDir/p2pkey.sock (mode
	// 0600). The CLI needs it; an embedding program may turn it off.
	ControlSocket bool

	// InviteTTL is the default lifetime of an invite.
	InviteTTL time.Duration
	// GenerationTimeout is the deadline given to a generation opened by a
	// join or a removal (generations.MinGenerationTimeout to
	// generations.MaxGenerationTimeout).
	GenerationTimeout time.Duration
	// AuditGrace is how long a holder must stay unreachable before an audit
	// re-shares around it (a holder that is only down is not lost). Zero
	// means an hour.
	AuditGrace time.Duration

	// MaxGenerationsBehind bounds, for a new cluster, how many committed
	// generations an absent member's old escrow is kept for before it lapses
	// and must be invited again (0: the ledger's default, 3).
	MaxGenerationsBehind uint32
	// LapseGrace is, for a new cluster, how long an absent member's old
	// escrow outlives that bound (from the commit of the first generation
	// it missed), so that a restart during a burst of joins and removals
	// costs it nothing (0: the ledger's default, an hour).
	LapseGrace time.Duration

	// AuditInterval is how often the node checks that every holder still
	// has its envelope (0 turns periodic audits off).
	AuditInterval time.Duration

	// Observer, if set, is told of every envelope this node stores,
	// serves, refuses or deletes as a holder, of its own pushes and
	// fetches, and of each unlock (metrics: see package opsweb).
	Observer Observer
	// Clock, if set, replaces the wall clock for everything the node
	// stamps, ages and times out (tests move time with it; timers still
	// run on the wall clock).
	Clock func() time.Time
	// Metrics turns on go-libp2p's own Prometheus metrics (registered with
	// the default registerer).
	Metrics bool

	// hooks lets this package's tests and benchmarks reach the transport seam
	// (drop pushes, count bytes). It is unexported: programs cannot set it.
	hooks *testHooks

	// Raft timing (consensus.Timing): DefaultConfig takes
	// consensus.LANTiming (a 3 s heartbeat: a dead leader is replaced in
	// 3-6 s, and an idle 5-node cluster costs its leader under 1% of a
	// core and 1.5 kB/s per node); consensus.WANTiming suits members far
	// apart. Joins and
	// generations do not wait on these: the leader nudges followers when it
	// commits. A zero field takes LANTiming's value.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
}

// RaftTiming returns c's Raft timing.
func (c Config) RaftTiming() consensus.Timing {
	return consensus.Timing{
		HeartbeatTimeout: c.HeartbeatTimeout, ElectionTimeout: c.ElectionTimeout,
		LeaderLeaseTimeout: c.LeaderLeaseTimeout, CommitTimeout: c.CommitTimeout,
	}
}

// Bounds on an invite's lifetime: an invite shorter than MinInviteTTL would
// expire before a joiner could use it, and a long-lived invite is a standing
// credential. The ledger enforces MaxInviteTTL too.
const (
	MinInviteTTL = time.Minute
	MaxInviteTTL = 7 * 24 * time.Hour
)

// DefaultConfig returns a configuration with safe defaults and the data
// directory dataDir.
func DefaultConfig(dataDir string) Config {
	lan := consensus.LANTiming()
	return Config{
		DataDir:            dataDir,
		RelayService:       true,
		MDNS:               true,
		ListenAddrs:        append([]string(nil), p2p.DefaultListenAddrs...),
		JoinTimeout:        2 * time.Minute,
		ControlSocket:      true,
		InviteTTL:          time.Hour,
		GenerationTimeout:  2 * time.Minute,
		AuditInterval:      time.Hour,
		HeartbeatTimeout:   lan.HeartbeatTimeout,
		ElectionTimeout:    lan.ElectionTimeout,
		LeaderLeaseTimeout: lan.LeaderLeaseTimeout,
		CommitTimeout:      lan.CommitTimeout,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("node: DataDir is required")
	}
	if c.Bootstrap && c.Join != "" {
		return errors.New("node: Bootstrap and Join are mutually exclusive")
	}
	if len(c.ListenAddrs) == 0 {
		return errors.New("node: at least one listen address is required")
	}
	for _, a := range append(append([]string(nil), c.ListenAddrs...), c.AnnounceAddrs...) {
		if _, err := ma.NewMultiaddr(a); err != nil {
			return fmt.Errorf("node: address %q: %w", a, err)
		}
	}
	if _, err := p2p.ParseRelays(c.Relays); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	switch c.Reachability {
	case "", "public", "private":
	default:
		return fmt.Errorf("node: Reachability %q: want public, private or empty", c.Reachability)
	}
	if c.Join != "" {
		if _, err := DecodeInvite(c.Join); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	for name, d := range map[string]time.Duration{
		"JoinTimeout": c.JoinTimeout, "InviteTTL": c.InviteTTL, "GenerationTimeout": c.GenerationTimeout,
	} {
		if d <= 0 {
			return fmt.Errorf("node: %s must be positive", name)
		}
	}
	if c.GenerationTimeout < generations.MinGenerationTimeout || c.GenerationTimeout > generations.MaxGenerationTimeout {
		return fmt.Errorf("node: GenerationTimeout %s: want %s to %s", c.GenerationTimeout, generations.MinGenerationTimeout, generations.MaxGenerationTimeout)
	}
	if c.InviteTTL < MinInviteTTL || c.InviteTTL > MaxInviteTTL {
		return fmt.Errorf("node: InviteTTL %s: want %s to %s", c.InviteTTL, MinInviteTTL, MaxInviteTTL)
	}
	if err := c.RaftTiming().Validate(); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if c.AuditGrace < 0 {
		return fmt.Errorf("node: AuditGrace must not be negative")
	}
	if c.ControlSocket && len(c.SocketPath()) > 100 {
		return fmt.Errorf("node: control socket path %q is too long for a unix socket; use a shorter data directory", c.SocketPath())
	}
	return nil
}

// setHooks installs h, the seam this package's tests and benchmarks reach
// the transport through; programs cannot.
func (c *Config) setHooks(h *testHooks) { c.hooks = h }

// withLibp2p returns a copy of h that also adds opts to the host.
func (h testHooks) withLibp2p(opts ...libp2p.Option) *testHooks {
	h.libp2p = append(slices.Clone(h.libp2p), opts...)
	return &h
}

type testHooks struct {
	// dropPush, if it returns true, drops this node's share push to holder.
	dropPush func(holder peer.ID) bool
	// raftDeny refuses Raft streams from the peers it names.
	raftDeny func(peer.ID) bool
	// libp2p adds options to the host (a bandwidth counter, say).
	libp2p []libp2p.Option
	// trace, if set, is told the steps of this node's unlock attempts and
	// of each fetch it serves as a holder (see Node.trace).
	trace func(self peer.ID, step string)
}

// IdentityPath is where the node's libp2p identity lives.
func (c Config) IdentityPath() string { return filepath.Join(c.DataDir, "identity.key") }

// SocketPath is the control API's unix socket.
func (c Config) SocketPath() string { return SocketPath(c.DataDir) }

// SocketPath is the control API's unix socket in dataDir.
func SocketPath(dataDir string) string { return filepath.Join(dataDir, "p2pkey.sock") }

func (c Config) raftDir() string     { return filepath.Join(c.DataDir, "raft") }
func (c Config) peersPath() string   { return filepath.Join(c.DataDir, "peers.json") }
func (c Config) sharesPath() string  { return filepath.Join(c.DataDir, "shares.db") }
func (c Config) clusterPath() string { return filepath.Join(c.DataDir, "cluster.json") }
func (c Config) hintPath() string    { return filepath.Join(c.DataDir, "unlock.json") }
func (c Config) removedPath() string { return filepath.Join(c.DataDir, "removed.json") }

// joiningPath holds the invite a joiner consumed, mode 0600, from the join
// request until it is admitted or refused, so that a joiner killed mid-join
// resumes with its own consumed invite.
// AuditLogPath is the holder's append-only record of share releases, JSON
// lines, rotated by size (see shares.AuditLog and `p2pkey audit-log`).
func (c Config) AuditLogPath() string { return filepath.Join(c.DataDir, "audit.jsonl") }

func (c Config) joiningPath() string { return filepath.Join(c.DataDir, "joining.invite") }

// clusterFile records which cluster this data directory belongs to, so a
// restarted node can serve and fetch shares before its ledger catches up.
type clusterFile struct {
	Version   int      `json:"version"`
	ClusterID string   `json:"cluster_id"`
	Relays    []string `json:"relays,omitempty"`
}

func writeClusterFile(path, clusterID string, relays []string) error {
	data, _ := json.Marshal(clusterFile{Version: 1, ClusterID: clusterID, Relays: relays})
	return writeFileAtomic(path, append(data, '\n'), 0o600)
}

func readClusterFile(path string) (clusterFile, error) {
	var cf clusterFile
	data, err := os.ReadFile(path)
	if err != nil {
		return cf, fmt.Errorf("read cluster file: %w", err)
	}
	if err := json.Unmarshal(data, &cf); err != nil || cf.Version != 1 || cf.ClusterID == "" {
		return cf, fmt.Errorf("cluster file %s is unreadable or of an unknown version", path)
	}
	return cf, nil
}

// Initialized reports whether dataDir has an identity.
func Initialized(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "identity.key"))
	return err == nil
}

// now reads the configured clock (see Clock).
func (c Config) now() time.Time {
	if c.Clock != nil {
		return c.Clock()
	}
	return time.Now()
}
