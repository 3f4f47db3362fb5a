package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
	gpb "github.com/p2pkey/p2pkey/generations/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares"
	"golang.org/x/time/rate"
)

var log = logging.Logger("p2pkey/node")

// Errors returned by Node.
var (
	ErrNoState       = errors.New("this data directory has no cluster state: start with Bootstrap (--bootstrap) or Join (--join INVITE)")
	ErrNotMember     = errors.New("this node is not a member of the cluster")
	ErrNotReady      = errors.New("the node has not joined a cluster yet")
	ErrUnknownMember = errors.New("no such member")
)

// Node is a running p2pkey node.
type Node struct {
	cfg  Config
	priv crypto.PrivKey
	host host.Host
	cons *consensus.Consensus
	sm   *ledgerSM

	store *shares.Store
	svc   *shares.Service
	// auditLog is the holder's record of share releases (audit.jsonl).
	auditLog *shares.AuditLog
	keys     *keyring

	relays  []peer.AddrInfo
	addrsCh chan struct{}
	mdns    io.Closer

	gossip *gossip
	// clusterID is set once in Start, before anything runs, and never
	// changes.
	clusterID string

	events *broadcaster
	// changed wakes the loops that wait on the ledger, the leader and
	// connections (see onChange).
	changed *changes
	keyPoke chan struct{}
	// joinGen is the generation opened for this node, as its join response
	// described it; it lets a joiner share before its ledger catches up.
	joinGen atomic.Pointer[joinGeneration]
	// joinGenSet is closed when joinGen is first set, waking share pushes
	// that arrived before the join response did.
	joinGenSet chan struct{}
	// redials throttles redial, per member.
	redials *p2p.PeerLimiter
	// consReady is cons, published for the FSM goroutine, which may run
	// before consensus.New has returned.
	consReady atomic.Pointer[consensus.Consensus]

	// Each concern keeps its own state behind its own lock.
	admitted  admission    // peers let into Raft before this node has a configuration
	holder    holderState  // the deletion duties this holder carried out
	escrow    escrowState  // what the escrow fan-out remembers between passes
	unlock    unlocker     // pacing of unlock attempts, the last unlock hint
	catchUp   catchUpState // gossip's view of what Raft has yet to deliver
	lastAudit atomic.Pointer[AuditReport]
	removed   atomic.Bool
	// barrierTerm is the Raft term in which this node, as leader, last
	// caught its ledger up with a barrier (reconcile loop only).
	barrierTerm uint64

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	control *controlServer

	bookMu    sync.Mutex
	lastBook  []byte
	closeOnce sync.Once

	// joinGaveUp: this joiner restarted mid-join, and the key it had
	// escrowed in its generation before is gone (see pushRound).
	joinGaveUp atomic.Bool
	// reshared is the generation for which this process opened a
	// generation to restore its escrow margin, 0 if none (see
	// reshareIfNoMargin: at most once per process).
	reshared atomic.Uint64

	// proposeMu serialises this node's signed proposals; lastSeq is the
	// last sequence number it signed.
	proposeMu sync.Mutex
	lastSeq   uint64
}

// Start opens the data directory, starts the libp2p host and Raft, and then
// bootstraps, joins, or resumes the cluster. It returns once the node is a
// member (or, on a restart, once Raft is running).
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	if _, err := secureDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if daemonRunning(cfg.SocketPath()) {
		return nil, fmt.Errorf("another daemon is already running on %s (socket %s)", cfg.DataDir, cfg.SocketPath())
	}
	priv, err := loadOrCreateIdentity(cfg.IdentityPath())
	if err != nil {
		return nil, err
	}
	hasState, err := consensus.HasState(cfg.raftDir())
	if err != nil {
		return nil, fmt.Errorf("read Raft state: %w", err)
	}
	// A joiner killed mid-join resumes with the invite it consumed.
	pending, hasPending := readPendingInvite(cfg.joiningPath())
	if !hasState && !cfg.Bootstrap && cfg.Join == "" && !hasPending {
		return nil, ErrNoState
	}
	if hasPending && cfg.Join == "" && !cfg.Bootstrap {
		cfg.Join = pending
	}
	var inv Invite
	var clusterID string
	relays := cfg.Relays
	var k []byte
	resuming := hasState && hasPending
	switch {
	case hasState && !resuming:
		cf, err := readClusterFile(cfg.clusterPath())
		if err != nil {
			return nil, err
		}
		clusterID = cf.ClusterID
		relays = mergeStrings(relays, cf.Relays)
	case cfg.Bootstrap:
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return nil, err
		}
		clusterID = hex.EncodeToString(id)
	default:
		if inv, err = DecodeInvite(cfg.Join); err != nil {
			return nil, err
		}
		if cfg.now().After(inv.ExpiresAt) {
			return nil, fmt.Errorf("%w: the invite expired at %s", generations.ErrInviteExpired, inv.ExpiresAt.Format(time.RFC3339))
		}
		clusterID = inv.ClusterID
		relays = mergeStrings(relays, inv.Relays)
	}
	if !hasState || resuming {
		// K is born in memory, here and only here (rule K1). A joiner that
		// resumes lost its first K with its process: it starts over (see
		// join: it gives up if that first K was already escrowed).
		if k, err = newK(); err != nil {
			return nil, err
		}
	}

	// The host is built before the Node, and the relay service asks about
	// membership from libp2p goroutines: reach the node through a pointer
	// that is nil (no one is a member) until the node exists.
	var self atomic.Pointer[Node]
	addrsChanged := make(chan struct{}, 1)
	relayInfos, err := p2p.ParseRelays(relays)
	if err != nil {
		return nil, err
	}
	hopts := []p2p.Option{
		p2p.WithListenAddrs(cfg.ListenAddrs...),
		p2p.WithNATPortMap(cfg.NATPortMap),
		p2p.WithMetrics(cfg.Metrics),
		p2p.WithAddrsChanged(func() {
			select {
			case addrsChanged <- struct{}{}:
			default:
			}
		}),
	}
	if len(cfg.AnnounceAddrs) > 0 {
		hopts = append(hopts, p2p.WithAnnounceAddrs(cfg.AnnounceAddrs...))
	}
	if len(relayInfos) > 0 {
		hopts = append(hopts, p2p.WithStaticRelays(relayInfos))
	}
	if cfg.RelayService {
		hopts = append(hopts, p2p.WithRelayService(func(p peer.ID) bool {
			n := self.Load()
			return n != nil && n.relayMember(p)
		}))
	}
	switch cfg.Reachability {
	case p2p.ReachPublic:
		hopts = append(hopts, p2p.WithReachability(network.ReachabilityPublic))
	case p2p.ReachPrivate:
		hopts = append(hopts, p2p.WithReachability(network.ReachabilityPrivate))
	}
	if cfg.hooks != nil {
		hopts = append(hopts, p2p.WithLibp2pOptions(cfg.hooks.libp2p...))
	}
	h, err := p2p.New(priv, hopts...)
	if err != nil {
		return nil, err
	}
	store, err := shares.OpenStore(cfg.sharesPath())
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open envelope store: %w", err)
	}
	nctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg: cfg, priv: priv, host: h, store: store,
		sm:         &ledgerSM{l: generations.New()},
		events:     newBroadcaster(),
		keys:       newKeyring(),
		changed:    newChanges(),
		keyPoke:    make(chan struct{}, 1),
		joinGenSet: make(chan struct{}),
		redials:    p2p.NewPeerLimiter(rate.Every(redialEvery), 1),
		relays:     relayInfos,
		addrsCh:    addrsChanged,
		ctx:        nctx, cancel: cancel,
	}
	self.Store(n)
	n.clusterID = clusterID
	if _, err := os.Stat(cfg.removedPath()); err == nil {
		n.removed.Store(true)
		n.keys.setProgress(UnlockProgress{Reason: ErrRemoved.Error() + "; it can never unlock again"})
	} else if k != nil {
		n.keys.set(k)
	} else {
		n.keys.setProgress(UnlockProgress{Reason: "waiting for the cluster"})
	}
	n.cons, err = consensus.New(consensus.Config{
		Host:               h,
		Dir:                cfg.raftDir(),
		StateMachine:       n.sm,
		ClusterID:          n.localClusterID,
		AllowUnconfigured:  n.allowUnconfigured,
		AllowMember:        n.allowMember,
		AllowForward:       n.allowForward,
		Errors:             errorCodec{},
		HeartbeatTimeout:   cfg.HeartbeatTimeout,
		ElectionTimeout:    cfg.ElectionTimeout,
		LeaderLeaseTimeout: cfg.LeaderLeaseTimeout,
		CommitTimeout:      cfg.CommitTimeout,
		OnApplied:          n.onApplied,
		Deny:               n.raftDeny,
		OnRefused:          n.onRaftRefused,
	})
	if err != nil {
		store.Close()
		h.Close()
		cancel()
		return nil, err
	}
	n.consReady.Store(n.cons)
	if n.auditLog, err = shares.OpenAuditLog(cfg.AuditLogPath(), shares.AuditOptions{}); err != nil {
		n.Close()
		return nil, fmt.Errorf("open the share-release audit log: %w", err)
	}
	svcOpts := []shares.Option{shares.WithSplitDecision(sharePolicy{n}.splitDecision), shares.WithAuditLog(n.auditLog)}
	if cfg.Observer != nil {
		svcOpts = append(svcOpts, shares.WithObserver(cfg.Observer))
	}
	n.svc, err = shares.NewService(h, store, priv, clusterID, sharePolicy{n}, svcOpts...)
	if err != nil {
		n.Close()
		return nil, err
	}
	if err := n.startGossip(clusterID); err != nil {
		n.Close()
		return nil, err
	}
	n.loadPeerBook()
	n.startJoinService()
	if cfg.MDNS {
		if n.mdns, err = p2p.StartMDNS(h, p2p.MDNSServiceTag, n.onMDNSPeer); err != nil {
			log.Warnw("mDNS discovery is off", "err", err)
		}
	}
	n.wg.Add(7)
	go n.changeLoop()
	go n.auditLoop()
	go n.announceLoop()
	go n.reconcileLoop()
	go n.connectLoop()
	go n.watchLoop()
	go n.keyLoop()
	if cfg.ControlSocket {
		if n.control, err = n.serveControl(); err != nil {
			n.Close()
			return nil, err
		}
	}

	switch {
	case resuming:
		log.Infow("resuming an interrupted join with the invite it consumed", "peer", h.ID(), "cluster", clusterID)
		err = n.join(ctx, inv)
		if errors.Is(err, generations.ErrInviteUsed) || errors.Is(err, generations.ErrAlreadyMember) {
			// It was admitted before it was killed: an ordinary restart.
			os.Remove(cfg.joiningPath())
			n.keys.wipe()
			n.keys.setProgress(UnlockProgress{Reason: "waiting for the cluster"})
			err = nil
		}
	case hasState:
		log.Infow("resuming from on-disk state; locked until a threshold of shares is back", "peer", h.ID(), "cluster", clusterID)
	case cfg.Bootstrap:
		err = n.bootstrap(ctx, clusterID)
	default:
		err = n.join(ctx, inv)
	}
	if err != nil {
		n.Close()
		if _, stillPending := readPendingInvite(cfg.joiningPath()); !hasState && !stillPending {
			// Leave no half-joined state behind: the next attempt, with a
			// new invite, starts clean. The identity stays. A join that
			// kept its invite (it resumes, or it was admitted) keeps its
			// data: it holds other members' envelopes.
			for _, p := range []string{cfg.raftDir(), cfg.sharesPath(), cfg.clusterPath(), cfg.peersPath(), cfg.joiningPath(), cfg.hintPath()} {
				os.RemoveAll(p)
			}
		}
		return nil, err
	}
	n.wg.Add(1)
	go n.announceAddrsLoop()
	return n, nil
}

func loadOrCreateIdentity(path string) (crypto.PrivKey, error) {
	priv, err := p2p.LoadIdentity(path)
	if errors.Is(err, os.ErrNotExist) {
		return p2p.CreateIdentity(path)
	}
	return priv, err
}

// Init creates dataDir's identity and returns its peer ID. It refuses to
// overwrite an existing identity.
func Init(dataDir string) (peer.ID, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", err
	}
	priv, err := p2p.CreateIdentity(DefaultConfig(dataDir).IdentityPath())
	if err != nil {
		return "", err
	}
	return peer.IDFromPrivateKey(priv)
}

func (n *Node) bootstrap(ctx context.Context, clusterID string) error {
	if err := writeClusterFile(n.cfg.clusterPath(), clusterID, n.cfg.Relays); err != nil {
		return err
	}
	if err := n.cons.Bootstrap(); err != nil {
		return fmt.Errorf("bootstrap Raft: %w", err)
	}
	now := n.now()
	if err := n.apply(ctx, generations.NewBootstrapWithPolicy(clusterID, n.host.ID(), generations.Retention{MaxGenerationsBehind: n.cfg.MaxGenerationsBehind, LapseGrace: n.cfg.LapseGrace}, now)); err != nil {
		return fmt.Errorf("bootstrap the ledger: %w", err)
	}
	// No generation yet: a split of one is K itself, so the founder is
	// unescrowed (K in memory only, never released) until the first join
	// opens generation 1 with two members (rule K1).
	log.Infow("bootstrapped a new cluster; K stays in memory, unescrowed, until a second node joins", "cluster", clusterID, "peer", n.host.ID())
	n.events.publish(Event{Type: EventBootstrapped, Peer: n.host.ID()})
	return nil
}

// apply signs cmd as this node, replicates it, and waits until this node
// has applied it too, so a read of the local ledger afterwards sees its
// effect.
func (n *Node) apply(ctx context.Context, cmd *gpb.Command) error {
	_, idx, err := n.propose(ctx, cmd)
	if err != nil {
		return err
	}
	return n.cons.WaitApplied(ctx, idx)
}

// applyResult replicates cmd and returns the state machine's result as the
// leader computed it, without waiting for this node to apply the entry.
func (n *Node) applyResult(ctx context.Context, cmd *gpb.Command) ([]byte, error) {
	res, _, err := n.propose(ctx, cmd)
	return res, err
}

// propose signs cmd with this node's identity (rule S7) and replicates it.
// Proposals are serialised: the ledger refuses a sequence number at or
// below the author's last one, so two in flight could overtake each other.
func (n *Node) propose(ctx context.Context, cmd *gpb.Command) ([]byte, uint64, error) {
	n.proposeMu.Lock()
	defer n.proposeMu.Unlock()
	data, err := n.signCommand(cmd)
	if err != nil {
		return nil, 0, err
	}
	res, idx, err := n.cons.ApplyIndex(ctx, data)
	if errors.Is(err, consensus.ErrMaybeApplied) {
		// The answer was lost (often: leadership moved while it committed):
		// the ledger says whether the command applied, since only an
		// applied command consumes its sequence number. Ask once a leader
		// can confirm a read index, within the caller's deadline.
		for ctx.Err() == nil {
			fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			ferr := n.cons.Fresh(fctx)
			cancel()
			if ferr != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			var last uint64
			n.view(func(l *generations.Ledger) { last = l.Seq(n.host.ID()) })
			if last >= cmd.GetSeq() {
				return nil, n.cons.AppliedIndex(), nil
			}
			break
		}
	}
	return res, idx, err
}

// signCommand signs cmd with the next sequence number and encodes it. The
// sequence is max(last+1, the ledger's last for this node+1, the clock in
// nanoseconds): increasing across restarts without being stored.
func (n *Node) signCommand(cmd *gpb.Command) ([]byte, error) {
	clusterID := n.ClusterID()
	if b := cmd.GetBootstrap(); b != nil && clusterID == "" {
		clusterID = b.GetClusterId()
	}
	if clusterID == "" {
		clusterID = n.clusterID
	}
	var last uint64
	n.view(func(l *generations.Ledger) { last = l.Seq(n.host.ID()) })
	seq := max(n.lastSeq+1, last+1, uint64(n.now().UnixNano()))
	n.lastSeq = seq
	if err := generations.Sign(cmd, n.priv, clusterID, seq); err != nil {
		return nil, err
	}
	return generations.EncodeCommand(cmd)
}

// ID returns the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Host returns the libp2p host, for embedders that run protocols of their own.
func (n *Node) Host() host.Host { return n.host }

// ClusterID returns the cluster ID, or "" before the node knows it.
func (n *Node) ClusterID() string {
	var id string
	n.view(func(l *generations.Ledger) { id = l.ClusterID() })
	return id
}

// view runs fn on the local ledger, locked against concurrent Apply.
func (n *Node) view(fn func(*generations.Ledger)) {
	n.cons.View(func(sm consensus.StateMachine) { fn(sm.(*ledgerSM).l) })
}

func (n *Node) raftDeny(p peer.ID) bool {
	return n.cfg.hooks != nil && n.cfg.hooks.raftDeny != nil && n.cfg.hooks.raftDeny(p)
}

// allowMember admits a Raft peer (its AppendEntries and InstallSnapshot
// only, see consensus' admission) that this node's ledger knows as active,
// or that its join response named as a member while its own ledger lags
// behind: unknown to it yet, still joining in it (a member that joined
// after the point this joiner's log has reached, and leads now), or
// rejected or lapsed there before it was invited again. A member that
// lags the same way admits the peers active members named when it asked
// them (vouch.go). A removed peer is refused whatever anyone said (R1):
// removal is final.
func (n *Node) allowMember(p peer.ID) bool {
	switch n.memberStatus(p) {
	case generations.StatusActive:
		return true
	case generations.StatusRemoved:
		return false
	}
	return n.allowUnconfigured(p) || n.catchUp.vouch.has(p, n.now())
}

// allowForward admits forwarded commands (and read-index requests) from
// peers outside the Raft configuration that this node's ledger knows as
// active or joining: a joiner records its receipts before it is a server.
// Raft's own RPCs are admitted by allowMember, which names active members
// only (rule S8).
func (n *Node) allowForward(p peer.ID) bool {
	switch n.memberStatus(p) {
	case generations.StatusActive, generations.StatusJoining:
		return true
	}
	return false
}

func (n *Node) allowUnconfigured(p peer.ID) bool { return n.admitted.has(p) }

func (n *Node) onApplied(uint64) {
	n.changed.notify()
	select {
	case n.keyPoke <- struct{}{}:
	default:
	}
}

// Close stops the node. It does not leave the cluster.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		if n.control != nil {
			n.control.close()
		}
		if n.mdns != nil {
			n.mdns.Close()
		}
		// A leader that stops hands leadership over first, so that a
		// graceful restart costs the cluster no election (and the node
		// itself no wait for one before its holders serve it again).
		if n.cons != nil {
			if err := n.cons.TransferLeadership(2 * time.Second); err != nil {
				log.Infow("stopping as leader without handing leadership over", "err", err)
			}
		}
		n.cancel()
		n.wg.Wait()
		n.snapshotForRestart()
		n.savePeerBook()
		if n.svc != nil {
			n.svc.Close()
		}
		if n.auditLog != nil {
			n.auditLog.Close()
		}
		err = n.cons.Close()
		if herr := n.host.Close(); err == nil {
			err = herr
		}
		if serr := n.store.Close(); err == nil {
			err = serr
		}
		n.keys.wipe()
		n.events.close()
	})
	return err
}

// closeSnapshotWait bounds the snapshot a stopping node takes.
const closeSnapshotWait = 2 * time.Second

// snapshotForRestart has Raft snapshot the ledger as the node stops, so the
// next start restores it in one step instead of replaying every entry since
// the last snapshot (by default, up to 8192 of them): replaying re-checks
// the signature of each command and of each receipt in it, and on a
// 15-member cluster that was about 100 ms of CPU per restart, spent while
// the restarted node opens its connections and its holders confirm their
// ledgers, which made up most of the restart-to-unlocked tail of issue 13.
// A node killed without stopping still replays. The snapshot is the ledger,
// which holds no key material.
//
// Raft logs a snapshot it refuses at ERROR, so none is asked for when it
// would be refused: with log entries not yet applied (a configuration change
// among them makes Raft wait for it), it first waits a moment for them, and
// with nothing applied since the last snapshot it asks for none.
func (n *Node) snapshotForRestart() {
	if n.cons == nil {
		return
	}
	st := n.cons.RaftState()
	applied := st.AppliedIndex
	if applied < st.LastLogIndex {
		// n.ctx is already cancelled: the node is stopping.
		ctx, cancel := context.WithTimeout(context.Background(), closeSnapshotWait/2)
		err := n.cons.WaitApplied(ctx, st.LastLogIndex)
		cancel()
		if err != nil {
			log.Debugw("stopping without a fresh snapshot: log entries are still to be applied", "err", err)
			return
		}
		applied = st.LastLogIndex
	}
	if applied <= st.LastSnapshotIndex {
		return
	}
	done := make(chan error, 1)
	go func() { done <- n.cons.Snapshot() }()
	select {
	case err := <-done:
		if err != nil {
			log.Debugw("stopping without a fresh snapshot", "err", err)
		}
	case <-time.After(closeSnapshotWait):
		log.Infow("stopping without a fresh snapshot: it took longer than " + closeSnapshotWait.String())
	}
}

// relayMember: active and joining members may use this node's relay.
func (n *Node) relayMember(p peer.ID) bool {
	st := n.memberStatus(p)
	return st.IsMember()
}

// onMDNSPeer handles a peer found on the LAN (rule N2). mDNS only supplies
// addresses: they go into the peerstore, and the node connects only to
// members (and to the members a joiner was told of); the connect loop picks
// up anyone who becomes a member later.
func (n *Node) onMDNSPeer(ai peer.AddrInfo) {
	if ai.ID == n.host.ID() {
		return
	}
	named := n.admitted.has(ai.ID)
	member := n.relayMember(ai.ID) || named
	log.Infow("mdns: found peer", "peer", ai.ID, "member", member, "addrs", ai.Addrs)
	n.host.Peerstore().AddAddrs(ai.ID, ai.Addrs, time.Hour)
	if !member {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
		defer cancel()
		if err := n.host.Connect(ctx, ai); err != nil {
			log.Debugw("mdns: connect", "peer", ai.ID, "err", err)
		}
	}()
}

func mergeStrings(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, s := range b {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// Every ledger command fits a forwarded command.
const _ = uint(consensus.MaxCommandSize - generations.MaxCommandSize)

// readPendingInvite reads the invite of an interrupted join, if any.
func readPendingInvite(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}
