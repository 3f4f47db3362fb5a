package consensus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.etcd.io/bbolt"
	bbolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

var log = logging.Logger("p2pkey/consensus")

// Errors returned by Consensus.
var (
	ErrNotLeader  = errors.New("consensus: this node is not the leader")
	ErrNoLeader   = errors.New("consensus: no leader is known")
	ErrClosed     = errors.New("consensus: closed")
	ErrNotAllowed = errors.New("consensus: peer is not in the Raft configuration")
	// ErrMaybeApplied means a command reached a leader that did not say
	// what became of it (it timed out, its stream was reset, or it lost
	// its leadership), so it may have been applied. Apply retries such a
	// command against the leader of the moment until its context ends; it
	// returns ErrMaybeApplied when the context ends first, and wraps it
	// around the error of a retry that failed (the ledger refusing the
	// retry as a replay of a command it already applied looks like that).
	// The caller must then look at the replicated state to learn the
	// outcome. A retry that succeeds returns no error: that attempt was
	// the one applied.
	ErrMaybeApplied = errors.New("consensus: the command may have been applied")
	// ErrCommandTooLarge refuses a command longer than MaxCommandSize.
	ErrCommandTooLarge = errors.New("consensus: command too large")
	// ErrBehind means this node has not applied what the leader confirmed
	// committed before the caller's context ended (see Fresh).
	ErrBehind = errors.New("consensus: this node has not caught up with the leader")
)

// MaxCommandSize bounds one state-machine command; the forward protocol's
// messages are bounded by it (MaxForwardSize). It must be at least the state
// machine's own bound, generations.MaxCommandSize (1 MiB today); consensus
// does not import generations, so package node, which imports both, asserts
// it.
const MaxCommandSize = 1 << 20

// ErrorCodec turns state-machine errors into stable codes and back, so that an
// error returned by the leader keeps its identity (errors.Is) when a command
// was forwarded.
type ErrorCodec interface {
	Code(err error) string
	Error(code string) error
}

// Config configures a Consensus.
type Config struct {
	// Host is the libp2p host Raft runs on. Its peer ID is the Raft server ID
	// and address.
	Host host.Host
	// Dir holds raft.db (log and stable store) and snapshots/.
	Dir string
	// StateMachine is the replicated state.
	StateMachine StateMachine
	// ClusterID returns the cluster ID carried in forwarded commands (rule
	// S4). It may return "" before the cluster is known.
	ClusterID func() string
	// AllowUnconfigured admits Raft streams from peers while this node has no
	// Raft configuration yet (a joiner waiting for its first AppendEntries).
	AllowUnconfigured func(peer.ID) bool
	// AllowMember names the peers the node knows, by its replicated state,
	// to be active members. They may send AppendEntries and InstallSnapshot
	// although this node's configuration does not list them as voters: a
	// node that is catching up holds an old configuration, and the current
	// leader may be a non-voter in it or absent from it; without this the
	// node would refuse that leader for as long as it leads. Such a peer
	// may therefore act as a leader toward this node (see DESIGN.md, "What
	// the hatches leave open"); it should name active members only, not
	// joiners. The leader also answers their read-index requests and, if
	// AllowForward is nil, takes their forwarded commands.
	AllowMember func(peer.ID) bool
	// AllowForward admits forwarded commands from peers outside the Raft
	// configuration: a joiner records its receipts before it is added to
	// Raft. If nil, AllowMember decides. Unlike AllowMember it grants no
	// Raft RPC.
	AllowForward func(peer.ID) bool
	// Deny, if set, refuses Raft streams and RPCs from the peers it names
	// even when they are voters, and the leader refuses their forwarded
	// commands and read-index requests: a block list, and the seam where
	// tests partition a node without touching the rest of the host.
	Deny func(peer.ID) bool
	// OnRefused, if set, is told of each peer whose Raft stream the gate
	// refused, or whose AppendEntries or InstallSnapshot the guard refused
	// (not of denied peers). A node whose configuration lags refuses a
	// leader it has not heard of yet this way; the caller may find out
	// from members it trusts whether that peer leads, and admit it through
	// AllowMember. It must not block.
	OnRefused func(peer.ID)
	// Now is this node's clock: stamped into every entry it appends as the
	// leader (rule S7), and read wherever consensus paces or measures
	// something itself (nudges when servers connect, how long a member
	// was unreachable). Raft's own timers run on real time. If nil,
	// time.Now.
	Now func() time.Time
	// Errors maps state-machine errors to codes across forwarding.
	Errors ErrorCodec
	// Logger receives everything consensus logs, Raft's own lines
	// included. If nil, go-log's "p2pkey/consensus" logger.
	Logger *zap.SugaredLogger

	// HeartbeatTimeout, ElectionTimeout, LeaderLeaseTimeout and
	// CommitTimeout are Raft's timing, as in Timing: a zero field takes
	// LANTiming's value.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64
	// MaxPool is how many idle Raft streams are kept per peer.
	MaxPool int
	// OnApplied is called after each log command is applied, with its index,
	// and when a configuration change commits, with the change's index.
	OnApplied func(index uint64)

	// noAutoNudge stops the leader from nudging after each command it
	// commits, so that tests can watch CommitTimeout and Nudge alone.
	noAutoNudge bool
}

// Timing returns c's Raft timing, zero fields and all.
func (c Config) Timing() Timing {
	return Timing{
		HeartbeatTimeout:   c.HeartbeatTimeout,
		ElectionTimeout:    c.ElectionTimeout,
		LeaderLeaseTimeout: c.LeaderLeaseTimeout,
		CommitTimeout:      c.CommitTimeout,
	}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if c.Host == nil || c.StateMachine == nil || c.Dir == "" {
		return errors.New("consensus: Host, StateMachine and Dir are required")
	}
	if c.MaxPool < 0 {
		return fmt.Errorf("consensus: MaxPool %d is negative", c.MaxPool)
	}
	return c.Timing().Validate()
}

// Consensus is a Raft server over libp2p.
type Consensus struct {
	cfg  Config
	raft *raft.Raft
	// ready is raft, published for the S1 gate, which runs on libp2p
	// goroutines from before NewRaft returns.
	ready     atomic.Pointer[raft.Raft]
	fsm       *fsm
	adm       *admission
	stream    *streamLayer
	transport *raftNet
	store     *raftboltdb.BoltStore
	logs      raft.LogStore
	forward   *forwarder
	// attemptTimeout bounds one forward or read-index round trip to the
	// leader, so that a leader that stopped answering is given up soon
	// after the cluster elects another (see forwardAttemptTimeout).
	attemptTimeout time.Duration

	stamp *stamper

	// localReads and remoteReads coalesce concurrent Fresh calls (and
	// read-index requests from followers) into rounds; see readRounds.
	localReads  *readRounds
	remoteReads *readRounds

	// appliedCh is closed and replaced whenever the FSM applies a command,
	// so WaitApplied wakes at once instead of polling.
	appliedMu sync.Mutex
	appliedCh chan struct{}
	// nudge asks the nudger to append a barrier, which carries the
	// leader's commit index to followers at once, and elected asks it for
	// two when this node becomes the leader (see nudgeLoop).
	nudge   chan struct{}
	elected chan struct{}
	// nudgesPending counts the nudge requests queued or running.
	nudgesPending atomic.Int32
	// memberMu orders configuration changes with nudges (see nudgeOnce).
	memberMu sync.Mutex
	// observations carries Raft's state and leader changes to observeLoop,
	// which closes and replaces leaderCh at each leader change.
	observer     *raft.Observer
	observations chan raft.Observation
	contacts     *contactLog
	// notifee nudges when a server connects (see connected), at most once
	// per heartbeat timeout per server (connectNudged).
	notifee       *network.NotifyBundle
	heartbeat     time.Duration
	connectMu     sync.Mutex
	connectNudged map[peer.ID]time.Time
	connectDue    map[peer.ID]bool // a connect nudge waits for its window to end
	leaderMu      sync.Mutex
	leaderCh      chan struct{}

	leaderHint  atomic.Pointer[peer.ID]
	done        chan struct{}
	nudgeDone   chan struct{}
	observeDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// New opens the stores in cfg.Dir and starts Raft. A node with existing state
// resumes from it; a new node waits to be bootstrapped or added.
func New(cfg Config) (*Consensus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ClusterID == nil {
		cfg.ClusterID = func() string { return "" }
	}
	if cfg.MaxPool == 0 {
		cfg.MaxPool = defaultMaxPool
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AllowForward == nil {
		cfg.AllowForward = cfg.AllowMember
	}
	if cfg.Logger == nil {
		cfg.Logger = &log.SugaredLogger
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, err
	}
	self := cfg.Host.ID()
	hl := newHCLogger(cfg.Logger, "self", self.String())

	store, err := openStore(filepath.Join(cfg.Dir, "raft.db"))
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Join(cfg.Dir, "raft.db"), 0o600); err != nil {
		store.Close()
		return nil, err
	}
	logs, err := raft.NewLogCache(256, store)
	if err != nil {
		store.Close()
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl.Named("snapshots"))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}

	c := &Consensus{
		cfg: cfg, store: store, logs: logs,
		appliedCh: make(chan struct{}), leaderCh: make(chan struct{}),
		nudge: make(chan struct{}, 1), elected: make(chan struct{}, 1),
		observations: make(chan raft.Observation, 64),
		done:         make(chan struct{}), nudgeDone: make(chan struct{}), observeDone: make(chan struct{}),
	}
	c.fsm = &fsm{sm: cfg.StateMachine, applied: c.onApplied}
	c.stamp = &stamper{now: cfg.Now, floor: c.fsm.maxStamp.Load}
	c.adm = &admission{raft: c.ready.Load, allowUnconfigured: cfg.AllowUnconfigured, allowMember: cfg.AllowMember, deny: cfg.Deny}
	c.stream = newStreamLayer(cfg.Host, c.adm.stream, c.adm.rpc)
	c.stream.log = cfg.Logger
	if cfg.OnRefused != nil {
		c.stream.onRefused = func(p peer.ID, in *rpcInfo) {
			if !c.adm.denied(p) && (in == nil || in.fromLeader()) {
				cfg.OnRefused(p)
			}
		}
	}
	c.transport = newRaftNet(c.stream, cfg.Logger, cfg.MaxPool, 10*time.Second)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(self.String())
	rc.Logger = hl
	timing := cfg.Timing().withDefaults()
	rc.HeartbeatTimeout = timing.HeartbeatTimeout
	rc.ElectionTimeout = timing.ElectionTimeout
	rc.LeaderLeaseTimeout = timing.LeaderLeaseTimeout
	rc.CommitTimeout = timing.CommitTimeout
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	rc.NoLegacyTelemetry = true
	// A buffered apply channel lets applyLocal hand an entry to Raft
	// without waiting for the leader loop while it holds the stamper's
	// lock, so
	// concurrent commands still commit in groups. Its cost, per raft's
	// documentation: an entry queued in the buffer may be appended after
	// Apply's timeout.
	rc.BatchApplyCh = true
	c.attemptTimeout = forwardAttemptTimeout(rc.ElectionTimeout)
	if err := raft.ValidateConfig(rc); err != nil {
		c.closeTransport()
		store.Close()
		return nil, fmt.Errorf("raft config: %w", err)
	}
	r, err := raft.NewRaft(rc, c.fsm, logs, store, snaps, c.transport)
	if err != nil {
		c.closeTransport()
		store.Close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	c.observer = raft.NewObserver(c.observations, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.RaftState, raft.LeaderObservation, raft.ResumedHeartbeatObservation, raft.FailedHeartbeatObservation:
			return true
		}
		return false
	})
	c.contacts = newContactLog(cfg.Logger.With("self", self.String()), cfg.Now, c.inConfigID)
	r.RegisterObserver(c.observer)
	c.raft = r
	c.ready.Store(r)
	c.localReads = newReadRounds(c.readIndexLocal, c.attemptTimeout)
	c.remoteReads = newReadRounds(c.readIndexRemote, c.attemptTimeout)
	c.forward = newForwarder(c)
	c.heartbeat = timing.HeartbeatTimeout
	c.connectNudged = make(map[peer.ID]time.Time)
	c.connectDue = make(map[peer.ID]bool)
	c.notifee = &network.NotifyBundle{ConnectedF: c.connected}
	cfg.Host.Network().Notify(c.notifee)
	go c.nudgeLoop()
	go c.observeLoop()
	if r.State() == raft.Leader {
		// A single-voter cluster can elect itself before the observer
		// was registered.
		c.nudgeElected()
	}
	return c, nil
}

func (c *Consensus) onApplied(index uint64) {
	c.appliedMu.Lock()
	close(c.appliedCh)
	c.appliedCh = make(chan struct{})
	c.appliedMu.Unlock()
	if c.cfg.OnApplied != nil {
		c.cfg.OnApplied(index)
	}
}

// AppliedChan returns a channel that is closed when the FSM next applies a
// command: a way to wait for the local state to change without polling.
func (c *Consensus) AppliedChan() <-chan struct{} {
	c.appliedMu.Lock()
	defer c.appliedMu.Unlock()
	return c.appliedCh
}

// SetLeaderHint names the peer to forward commands to while Raft itself
// knows no leader: a joiner learns the leader from its join response before
// the leader has replicated anything to it.
func (c *Consensus) SetLeaderHint(p peer.ID) {
	if p == "" {
		c.leaderHint.Store(nil)
		return
	}
	c.leaderHint.Store(&p)
}

func (c *Consensus) closeTransport() {
	c.transport.Close()
	c.stream.Close()
}

// InConfiguration reports whether p is a server in the latest configuration.
func (c *Consensus) InConfiguration(p peer.ID) bool { return c.inConfigID(raft.ServerID(p.String())) }

func (c *Consensus) inConfigID(id raft.ServerID) bool {
	for _, s := range c.raft.GetConfiguration().Configuration().Servers {
		if s.ID == id {
			return true
		}
	}
	return false
}

// ResetStreams resets every Raft stream p has open to this node. Every RPC
// is checked against Deny and the allow-lists as it arrives, so this is not
// needed for safety; it frees p's pooled streams and makes p notice at once.
func (c *Consensus) ResetStreams(p peer.ID) int { return c.stream.resetPeer(p) }

// Recheck resets the pooled Raft streams of every peer the S1 gate would no
// longer admit, and returns how many it reset. Call it after dropping peers
// from the lists behind AllowUnconfigured or AllowMember (a joiner whose join
// was decided). Nothing in consensus caches an admission: even without
// Recheck, such a peer's next RPC is refused.
func (c *Consensus) Recheck() int {
	return c.stream.resetWhere(func(p peer.ID) bool { return !c.adm.stream(p) })
}

// RefusedStreams reports how many Raft streams the S1 gate refused.
func (c *Consensus) RefusedStreams() uint64 { return c.stream.Refused() }

// RefusedRPCs reports how many Raft RPCs on admitted streams were refused
// (rule S8): they named a peer other than their sender, or came from a peer
// that may not send them.
func (c *Consensus) RefusedRPCs() uint64 { return c.stream.RefusedRPCs() }

// HasState reports whether dir already holds Raft state, so a restart needs
// neither bootstrap nor join.
func HasState(dir string) (bool, error) {
	path := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	store, err := openStore(path)
	if err != nil {
		return false, err
	}
	defer store.Close()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, newHCLogger(&log.SugaredLogger))
	if err != nil {
		return false, err
	}
	return raft.HasExistingState(store, store, snaps)
}

// Bootstrap makes this node the single voter of a new cluster.
func (c *Consensus) Bootstrap() error {
	self := c.cfg.Host.ID().String()
	f := c.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
		Suffrage: raft.Voter,
		ID:       raft.ServerID(self),
		Address:  raft.ServerAddress(self),
	}}})
	return f.Error()
}

// ID returns this server's peer ID.
func (c *Consensus) ID() peer.ID { return c.cfg.Host.ID() }

// IsLeader reports whether this node is the leader.
func (c *Consensus) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the current leader, or "" if none is known.
func (c *Consensus) Leader() peer.ID {
	_, id := c.raft.LeaderWithID()
	if id == "" {
		return ""
	}
	p, err := peer.Decode(string(id))
	if err != nil {
		return ""
	}
	return p
}

// State returns "Leader", "Follower", "Candidate" or "Shutdown". RaftState
// has it typed (Role).
func (c *Consensus) State() string { return c.raft.State().String() }

// Stats returns Raft's own statistics as strings, for display; RaftState has
// the term and indexes typed.
func (c *Consensus) Stats() map[string]string { return c.raft.Stats() }

// AppliedIndex returns the index of the last entry applied to the FSM.
func (c *Consensus) AppliedIndex() uint64 { return c.raft.AppliedIndex() }

// Server describes one member of the Raft configuration.
type Server struct {
	ID    peer.ID
	Voter bool
}

// Servers returns the latest Raft configuration, sorted as Raft keeps it.
func (c *Consensus) Servers() []Server {
	cfg := c.raft.GetConfiguration().Configuration()
	out := make([]Server, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		p, err := peer.Decode(string(s.ID))
		if err != nil {
			continue
		}
		out = append(out, Server{ID: p, Voter: s.Suffrage == raft.Voter})
	}
	return out
}

// View runs fn with the state machine locked against concurrent Apply, for
// consistent reads of local state.
func (c *Consensus) View(fn func(StateMachine)) { c.fsm.View(fn) }

// Apply replicates cmd and returns the state machine's result. On a follower
// it forwards cmd to the leader. Raft's error and the state machine's error
// come back as one error.
func (c *Consensus) Apply(ctx context.Context, cmd []byte) ([]byte, error) {
	res, _, err := c.ApplyIndex(ctx, cmd)
	return res, err
}

// ApplyIndex is Apply that also returns the log index of the entry.
//
// It tries until ctx ends: on the leader it applies locally; on a follower it
// forwards to the leader Raft knows (or the leader hint). When there is no
// leader, or the one asked is no longer the leader, or it does not answer
// within one attempt (see forwardAttemptTimeout), or the follower learns of a
// newer leader while it waits, it tries again with the leader of the moment.
// An attempt whose outcome is unknown makes the final error ErrMaybeApplied
// unless a later attempt succeeds.
func (c *Consensus) ApplyIndex(ctx context.Context, cmd []byte) ([]byte, uint64, error) {
	if len(cmd) > MaxCommandSize {
		return nil, 0, fmt.Errorf("%w: %d bytes, at most %d", ErrCommandTooLarge, len(cmd), MaxCommandSize)
	}
	var maybe error // the first attempt whose outcome is unknown
	for {
		var (
			res []byte
			idx uint64
			err error
			try bool
		)
		if c.IsLeader() {
			res, idx, err = c.applyLocal(ctx, cmd)
			try = true
		} else if leader := c.forwardTo(); leader != "" && leader != c.ID() {
			res, idx, err = c.forward.send(ctx, leader, cmd)
			try = true
		}
		if try {
			switch {
			case errors.Is(err, ErrMaybeApplied), errors.Is(err, raft.ErrLeadershipLost):
				if maybe == nil {
					maybe = err
				}
			case errors.Is(err, raft.ErrNotLeader), errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader):
				// Nothing was appended: try again.
			case maybe != nil && err != nil:
				return res, idx, fmt.Errorf("%w (%v), and a retry failed: %w", ErrMaybeApplied, maybe, err)
			default:
				return res, idx, err
			}
		}
		// No usable leader right now: wait for one, bounded by ctx.
		select {
		case <-ctx.Done():
			if maybe != nil {
				return nil, 0, fmt.Errorf("%w (%v), and no leader answered a retry: %w", ErrMaybeApplied, maybe, ctx.Err())
			}
			return nil, 0, fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-time.After(retryInterval):
		}
	}
}

// retryInterval is how long ApplyIndex and Fresh wait between attempts when
// no leader could take one.
const retryInterval = 50 * time.Millisecond

// forwardAttemptTimeout bounds one round trip to the leader: 3 election
// timeouts, within [2 s, 10 s]. A leader that stops answering (paused,
// partitioned) is replaced by an election within about 2 election timeouts,
// so the retry goes to its successor soon after; ApplyIndex and Fresh also
// give up an attempt as soon as Raft names a different leader.
func forwardAttemptTimeout(election time.Duration) time.Duration {
	return min(max(3*election, 2*time.Second), 10*time.Second)
}

// applyLocal applies on this node, which must be the leader. It is the one
// place that merges ApplyFuture.Error() and the FSM's response (STYLE 7), and
// the one place that stamps the leader's clock into an entry (rule S7).
func (c *Consensus) applyLocal(ctx context.Context, cmd []byte) ([]byte, uint64, error) {
	if len(cmd) > MaxCommandSize {
		return nil, 0, fmt.Errorf("%w: %d bytes, at most %d", ErrCommandTooLarge, len(cmd), MaxCommandSize)
	}
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, 0, ctx.Err()
		}
	}
	f := c.stamp.apply(c.raft, cmd, timeout)
	if err := f.Error(); err != nil {
		return nil, 0, err
	}
	c.autoNudge()
	r, ok := f.Response().(applyResult)
	if !ok {
		return nil, f.Index(), fmt.Errorf("consensus: unexpected FSM response %T", f.Response())
	}
	return r.result, f.Index(), r.err
}

// stamper stamps the leader's clock into the entries it appends (rule S7).
type stamper struct {
	now func() time.Time
	// floor is the highest stamp this node has applied.
	floor func() int64

	// mu orders stamping with appending: the stamp is taken and the entry
	// handed to Raft under it, so log order is stamp order.
	mu   sync.Mutex
	last int64
}

// apply hands cmd to Raft in an entry stamped with the leader's clock. The
// stamp is max(previous stamp + 1, highest stamp applied + 1, now): it never
// goes backwards on this node, whoever proposed the command, and it starts
// above what earlier leaders stamped, as far as this node has applied their
// entries. With BatchApplyCh the enqueue does not wait for the leader loop,
// so the lock is held briefly and concurrent commands still commit in groups.
func (s *stamper) apply(r *raft.Raft, cmd []byte, timeout time.Duration) raft.ApplyFuture {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamp := max(s.last+1, s.floor()+1, s.now().UnixNano())
	s.last = stamp
	return r.Apply(EncodeEntry(stamp, cmd), timeout)
}

// forwardTo is the leader Raft knows, or else the leader hint.
func (c *Consensus) forwardTo() peer.ID {
	if l := c.Leader(); l != "" {
		return l
	}
	if h := c.leaderHint.Load(); h != nil {
		return *h
	}
	return ""
}

// Barrier waits until every entry committed before the call is applied
// locally. Only the leader can issue it.
func (c *Consensus) Barrier(timeout time.Duration) error { return c.raft.Barrier(timeout).Error() }

// WaitApplied waits until the local FSM has applied index.
func (c *Consensus) WaitApplied(ctx context.Context, index uint64) error {
	// Raft counts an entry applied once it is handed to the FSM goroutine,
	// before FSM.Apply has run, so the FSM's own index is the exact test.
	// Entries that never reach the FSM (barriers, configuration changes,
	// commands covered by a restored snapshot) are caught by Raft's index
	// on the next tick, but only when the entry at index is not a command
	// still on its way to the FSM.
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		ch := c.AppliedChan()
		if c.fsm.lastIndex.Load() >= index {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-t.C:
			if c.raft.AppliedIndex() >= index && !c.commandAt(index) {
				return nil
			}
		}
	}
}

// commandAt reports whether the log still holds a command at index (one
// the FSM applies); an entry compacted into a snapshot is not.
func (c *Consensus) commandAt(index uint64) bool {
	if c.fsm.lastIndex.Load() >= index {
		return false
	}
	// A restored snapshot (at start, or installed by the leader) covers
	// every entry up to its index, though the log keeps trailing entries.
	if index <= c.lastSnapshotIndex() {
		return false
	}
	var l raft.Log
	if err := c.logs.GetLog(index, &l); err != nil {
		return false
	}
	return l.Type == raft.LogCommand
}

// AddNonvoter adds p as a non-voting server. Leader only.
func (c *Consensus) AddNonvoter(p peer.ID, timeout time.Duration) error {
	id := raft.ServerID(p.String())
	return c.changeMembership(func() raft.IndexFuture { return c.raft.AddNonvoter(id, raft.ServerAddress(id), 0, timeout) })
}

// AddVoter adds p as a voter, or promotes it if it is a non-voter. Leader only.
func (c *Consensus) AddVoter(p peer.ID, timeout time.Duration) error {
	id := raft.ServerID(p.String())
	return c.changeMembership(func() raft.IndexFuture { return c.raft.AddVoter(id, raft.ServerAddress(id), 0, timeout) })
}

// RemoveServer takes p out of the configuration. Leader only.
func (c *Consensus) RemoveServer(p peer.ID, timeout time.Duration) error {
	return c.changeMembership(func() raft.IndexFuture { return c.raft.RemoveServer(raft.ServerID(p.String()), 0, timeout) })
}

// changeMembership runs one configuration change, not concurrently with a
// nudge, and, once it is committed, has the followers hear of it at once.
func (c *Consensus) changeMembership(change func() raft.IndexFuture) error {
	c.memberMu.Lock()
	err := change().Error()
	c.memberMu.Unlock()
	if err == nil {
		c.autoNudge()
	}
	return c.leaderErr(err)
}

// isVoter reports whether p is a voter in the latest configuration.
func (c *Consensus) isVoter(p peer.ID) bool {
	id := raft.ServerID(p.String())
	for _, s := range c.raft.GetConfiguration().Configuration().Servers {
		if s.ID == id {
			return s.Suffrage == raft.Voter
		}
	}
	return false
}

func (c *Consensus) leaderErr(err error) error {
	if errors.Is(err, raft.ErrNotLeader) {
		return ErrNotLeader
	}
	return err
}

// LeaderCh reports leadership changes of this node.
func (c *Consensus) LeaderCh() <-chan bool { return c.raft.LeaderCh() }

// Snapshot forces a snapshot now.
func (c *Consensus) Snapshot() error { return c.raft.Snapshot().Error() }

// Close shuts Raft down and releases the stores and the protocol handlers.
func (c *Consensus) Close() error {
	c.closeOnce.Do(func() {
		c.forward.close()
		close(c.done)
		c.cfg.Host.Network().StopNotify(c.notifee)
		err := c.raft.Shutdown().Error()
		c.raft.DeregisterObserver(c.observer)
		<-c.nudgeDone
		<-c.observeDone
		c.closeTransport()
		if !c.stream.drain(2 * time.Second) {
			c.cfg.Logger.Infow("closing the Raft store while an RPC handler still runs")
		}
		if cerr := c.store.Close(); err == nil {
			err = cerr
		}
		c.closeErr = err
	})
	return c.closeErr
}

// ErrStoreLocked means another process has the Raft store open.
var ErrStoreLocked = errors.New("consensus: the Raft store is locked by another process (is a daemon already running on this data directory?)")

func openStore(path string) (*raftboltdb.BoltStore, error) {
	store, err := raftboltdb.New(raftboltdb.Options{
		Path:        path,
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true},
	})
	if errors.Is(err, bbolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrStoreLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open raft store %s: %w", path, err)
	}
	return store, nil
}
