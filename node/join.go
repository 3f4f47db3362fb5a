package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
	gpb "github.com/p2pkey/p2pkey/generations/pb"
	"github.com/p2pkey/p2pkey/node/pb"
	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/wire"
	"golang.org/x/time/rate"
)

// JoinProtocol is where a joiner presents its invite.
const JoinProtocol protocol.ID = "/p2pkey/join/3.0.0"

const (
	joinServiceName = "p2pkey.join"
	// MaxJoinMessageSize bounds a join request or response.
	MaxJoinMessageSize = 64 << 10
	joinStreamTimeout  = 30 * time.Second
	joinVersion        = 3
)

// Join error codes that are not ledger errors.
const (
	codeWrongCluster = "join.wrong_cluster"
	codeBadRequest   = "join.bad_request"
	codeRateLimited  = "join.rate_limited"
	codeUnavailable  = "join.unavailable"
)

// Errors a joiner can get back.
var (
	ErrWrongCluster   = errors.New("the invite is for another cluster")
	ErrJoinRefused    = errors.New("join refused")
	ErrJoinRateLimit  = errors.New("too many join attempts; try again shortly")
	ErrJoinNoResponse = errors.New("no member named in the invite answered")
)

// joinProto is the join protocol's shape on the wire: one request, one
// response, each at most MaxJoinMessageSize, within joinStreamTimeout.
var joinProto = wire.Protocol{
	ID: JoinProtocol, Service: joinServiceName,
	MaxRequest: MaxJoinMessageSize, MaxResponse: MaxJoinMessageSize,
	Timeout: joinStreamTimeout, Versions: []uint32{joinVersion},
}

// maxJoinMembers bounds the member lists of a join response.
const maxJoinMembers = 1024

// DecodeJoinRequest reads one size-bounded, version-checked join request.
// Its errors wrap ErrBadInvite and wire's sentinels.
func DecodeJoinRequest(r io.Reader) (*pb.JoinRequest, error) {
	m := &pb.JoinRequest{}
	if err := wire.ReadMsg(r, m, MaxJoinMessageSize, joinVersion); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadInvite, err)
	}
	if err := checkJoinRequest(m); err != nil {
		return nil, err
	}
	return m, nil
}

func checkJoinRequest(m *pb.JoinRequest) error {
	if len(m.GetCommand()) == 0 {
		return fmt.Errorf("%w: no signed join command", ErrBadInvite)
	}
	return nil
}

// DecodeJoinResponse reads one size-bounded, version-checked join response.
func DecodeJoinResponse(r io.Reader) (*pb.JoinResponse, error) {
	m := &pb.JoinResponse{}
	if err := wire.ReadMsg(r, m, MaxJoinMessageSize, joinVersion); err != nil {
		return nil, fmt.Errorf("join response: %w", err)
	}
	if err := checkJoinResponse(m); err != nil {
		return nil, err
	}
	return m, nil
}

func checkJoinResponse(m *pb.JoinResponse) error {
	if len(m.GetMembers()) > maxJoinMembers || len(m.GetOpened().GetMembers()) > maxJoinMembers {
		return fmt.Errorf("join response: %w: more than %d members", wire.ErrMalformed, maxJoinMembers)
	}
	return nil
}

type joinService struct {
	n      *Node
	global *rate.Limiter
	// limits bounds join attempts per peer and per IP (with bounded
	// memory) before anything is decoded (rule S10).
	limits *p2p.ConnLimiter
	// refusedLog paces the warnings for rate-limited attempts.
	refusedLog *rate.Limiter
}

func (n *Node) startJoinService() {
	js := &joinService{
		n:          n,
		global:     rate.NewLimiter(rate.Limit(5), 20),
		limits:     p2p.NewConnLimiter(p2p.Bucket{Rate: rate.Every(2 * time.Second), Burst: 3}, p2p.Bucket{Rate: 1, Burst: 20}),
		refusedLog: rate.NewLimiter(rate.Every(time.Second), 5),
	}
	n.host.SetStreamHandler(JoinProtocol, js.handle)
	n.catchUp.vouch.ready.Store(true)
	n.wg.Add(1)
	go n.leaderlessWatch()
}

// handle runs one join exchange (wire.Serve: scope, reservation, deadline,
// bounded versioned read, Reset on error, Close on success). Every refusal
// is an answer the joiner reads, with a stable code.
func (js *joinService) handle(s network.Stream) {
	remote := s.Conn().RemotePeer()
	if !js.limits.Allow(s.Conn(), js.n.now()) {
		if js.refusedLog.Allow() {
			// At most a line a second after a burst: a flood is the
			// stranger's, the log is the operator's.
			log.Warnw("join refused: rate limited", "peer", remote)
		}
		_ = wire.Reply(s, joinProto, js.refusal(codeRateLimited, ErrJoinRateLimit.Error()))
		return
	}
	err := wire.Serve(js.n.ctx, s, joinProto, func(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
		if req.GetCatchUp() {
			return js.catchUp(ctx, remote, req), nil
		}
		if err := checkJoinRequest(req); err != nil {
			log.Warnw("join refused: malformed request", "peer", remote, "err", err)
			return js.refusal(codeBadRequest, err.Error()), nil
		}
		return js.serve(ctx, remote, req), nil
	}, wire.WithBadRequest(func(err error) *pb.JoinResponse {
		log.Warnw("join refused: malformed request", "peer", remote, "err", err)
		return js.refusal(codeBadRequest, fmt.Errorf("%w: %w", ErrBadInvite, err).Error())
	}))
	if err != nil && !errors.Is(err, wire.ErrMalformed) && !errors.Is(err, wire.ErrTooLarge) && !errors.Is(err, wire.ErrBadVersion) {
		log.Debugw("join exchange failed", "peer", remote, "err", err)
	}
}

// refusal is the answer to a join this member refuses: a stable code and a
// message for the joiner.
func (js *joinService) refusal(code, msg string) *pb.JoinResponse {
	return &pb.JoinResponse{Version: joinVersion, ClusterId: js.n.ClusterID(), ErrorCode: code, ErrorMessage: msg}
}

// serve decides one well-formed join request; the response carries the
// outcome, a refusal included.
func (js *joinService) serve(ctx context.Context, remote peer.ID, req *pb.JoinRequest) *pb.JoinResponse {
	resp := &pb.JoinResponse{Version: joinVersion, ClusterId: js.n.ClusterID()}
	if resp.ClusterId == "" {
		return js.refusal(codeUnavailable, ErrNotReady.Error())
	}
	if req.GetClusterId() != resp.ClusterId {
		log.Warnw("join refused: invite for another cluster", "peer", remote, "invite_cluster", req.GetClusterId())
		return js.refusal(codeWrongCluster, fmt.Sprintf("%v: the invite names cluster %s, this node is in cluster %s", ErrWrongCluster, req.GetClusterId(), resp.ClusterId))
	}
	// The joiner signed its own ConsumeInvite and proved it holds the
	// invite secret (the secret never leaves it). Check it against this
	// node's ledger before proposing anything: a join with a wrong, used or
	// expired invite costs no Raft entry (rule S10).
	cmd, err := generations.DecodeCommand(req.GetCommand())
	if err == nil && (generations.KindOf(cmd) != generations.KindConsumeInvite || peer.ID(cmd.GetAuthor()) != remote) {
		err = fmt.Errorf("%w: the join command must be the joiner's own ConsumeInvite", ErrBadInvite)
	}
	if err == nil {
		js.n.view(func(l *generations.Ledger) { err = l.CheckJoin(cmd, js.n.now()) })
	}
	if err != nil && errors.Is(err, generations.ErrInviteUsed) {
		// A joiner resuming with its consumed invite is told where it
		// stands (still joining, or admitted) from a ledger confirmed
		// current: a member cut off from the leader could say "joining"
		// of a joiner that is active, and the joiner would keep a K of
		// its own. Unconfirmed, it sends the joiner to another member.
		fctx, fcancel := context.WithTimeout(ctx, freshWait)
		ferr := js.n.cons.Fresh(fctx)
		fcancel()
		if ferr != nil {
			return js.refusal(codeUnavailable, fmt.Sprintf("this member cannot confirm its ledger is current (%v); try another", ferr))
		}
		js.n.view(func(l *generations.Ledger) { err = l.CheckJoin(cmd, js.n.now()) })
	}
	if err != nil {
		if resumed := js.resume(remote, cmd, err, resp); resumed {
			return resp
		}
		log.Infow("join refused before proposing", "peer", remote, "err", err)
		code := generations.ErrorCode(err)
		if code == "" {
			code = codeBadRequest
		}
		return js.refusal(code, err.Error())
	}
	if !js.global.Allow() {
		log.Warnw("join refused: too many proven joins at once", "peer", remote)
		return js.refusal(codeRateLimited, ErrJoinRateLimit.Error())
	}
	// Leave the answer time to reach the joiner.
	ctx, cancel := context.WithTimeout(ctx, joinStreamTimeout-5*time.Second)
	defer cancel()
	// The joiner is admitted only when the generation opened for it commits
	// (rules J2-J4); the deadline bounds the attempt (J5). The leader's
	// answer says which generation opened for the joiner, so the joiner is
	// told without waiting for this node's ledger to apply it.
	opened, _, err := js.n.cons.ApplyIndex(ctx, req.GetCommand())
	if errors.Is(err, consensus.ErrMaybeApplied) && js.n.cons.Fresh(ctx) == nil {
		// The leader's answer was lost: the joiner's sequence number says
		// whether its join applied (only an applied command consumes it).
		js.n.view(func(l *generations.Ledger) {
			if l.Seq(remote) >= cmd.GetSeq() {
				err = nil
				if g, ok := l.Open(); ok && slices.Contains(g.Members, remote) {
					opened = encodeOpened(g)
				}
			}
		})
	}
	if err != nil {
		log.Warnw("join refused", "peer", remote, "err", err)
		code := generations.ErrorCode(err)
		if code == "" {
			code = codeUnavailable
		}
		return js.refusal(code, err.Error())
	}
	log.Infow("invite accepted", "peer", remote)
	js.n.host.Peerstore().AddAddrs(remote, js.n.host.Peerstore().Addrs(remote), time.Hour)
	p2p.Protect(js.n.host, remote)
	resp.Members = js.n.memberPeers()
	resp.Leader = []byte(js.n.cons.Leader())
	if g, ok := decodeOpened(opened); ok && slices.Contains(g.Members, remote) {
		resp.Opened = openedMessage(g.generation())
	}
	js.n.pokeReconciler()
	return resp
}

// join presents the invite to the members it names, one after another, and
// then waits until this node is a voter that sees itself as an active member.
func (n *Node) join(ctx context.Context, inv Invite) (err error) {
	// The join as a whole is bounded by JoinTimeout while it waits for a
	// member to take the invite and for its generation to open, and then by
	// that generation's own deadline: a joiner queued behind another
	// generation does not count the queue against its own.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Once join returns, the ledger knows the generation (or the join failed).
	defer n.joinGen.Store(nil)
	// The members named by the invite and the join response were allowed
	// to reach this node's Raft while it had no configuration; once the
	// join is decided, only the configuration and the ledger decide.
	defer func() {
		n.admitted.clear()
		n.cons.Recheck() // pooled streams of peers no longer allowed are reset
	}()
	// Keep the invite until the join is decided, so a joiner killed now
	// resumes with it (the ledger has it as used by this node).
	if werr := writeFileAtomic(n.cfg.joiningPath(), []byte(inv.Encode()+"\n"), 0o600); werr != nil {
		return fmt.Errorf("keep the invite for a resumed join: %w", werr)
	}
	// A joiner the cluster already admitted keeps the invite whatever
	// happens next (no quorum, a timeout): it is a member, and must resume.
	var admitted bool
	defer func() {
		if err == nil || (!admitted && (errors.Is(err, ErrJoinRejected) || errors.Is(err, ErrJoinRefused))) {
			os.Remove(n.cfg.joiningPath())
		}
	}()
	reqCtx, reqCancel := context.WithTimeout(ctx, n.cfg.JoinTimeout)
	defer reqCancel()
	infos, err := addrInfos(inv.Addrs)
	if err != nil {
		return err
	}
	// Admit the named members to Raft before the leader adds us, so its first
	// AppendEntries is not refused.
	for _, ai := range infos {
		n.admitted.add(ai.ID)
	}

	// Dial every member the invite names while the invite is checked: the
	// joiner exchanges shares with all of them as soon as its generation
	// opens, and connection set-up (a Noise handshake each way) would
	// otherwise sit on that path.
	n.dialAll(reqCtx, infos)

	var lastErr error = ErrJoinNoResponse
	var resp *pb.JoinResponse
	for _, ai := range infos {
		if ai.ID == n.host.ID() {
			continue
		}
		resp, err = n.requestJoin(reqCtx, ai, inv)
		if err == nil {
			break
		}
		lastErr = err
		// A refusal from the ledger is final; a dead member is not. Nor is
		// "unknown invite" while other members remain: an invite issued a
		// moment ago may not have reached this member's ledger yet (the
		// member answers from its own copy, so that made-up invites cost
		// no read index), and another member may know it.
		if errors.Is(err, generations.ErrUnknownInvite) {
			log.Infow("a member does not know the invite (yet); asking the next", "member", ai.ID)
			continue
		}
		if errors.Is(err, ErrJoinRefused) || errors.Is(err, ErrWrongCluster) {
			return err
		}
		log.Warnw("join attempt failed", "member", ai.ID, "err", err)
	}
	if resp == nil {
		return lastErr
	}
	var others []peer.AddrInfo
	for _, m := range resp.GetMembers() {
		if id, err := peer.IDFromBytes(m.GetId()); err == nil {
			n.admitted.add(id)
			n.addAddrs(id, m.GetAddrs())
			p2p.Protect(n.host, id)
			others = append(others, peer.AddrInfo{ID: id})
		}
	}
	if resp.GetAdmitted() {
		admitted = true
		// Admitted before this process: the K it made is not the escrowed
		// one. It must never serve or share it; it unlocks from its
		// holders once its ledger has caught up.
		n.keys.wipe()
		n.keys.setProgress(UnlockProgress{Reason: "admitted before this restart; waiting for the cluster"})
		log.Infow("this node was admitted before it restarted; locked until a threshold of its shares is back")
	}
	if jg, err := decodeJoinGeneration(resp); err != nil {
		log.Warnw("join response describes no usable generation; waiting for the ledger", "err", err)
	} else if jg != nil {
		n.joinGen.Store(jg)
		close(n.joinGenSet)
		if leader, err := peer.IDFromBytes(resp.GetLeader()); err == nil {
			n.cons.SetLeaderHint(leader)
		}
		n.pokeKeys()
	}
	n.dialAll(ctx, others)
	if err := writeClusterFile(n.cfg.clusterPath(), inv.ClusterID, mergeStrings(n.cfg.Relays, inv.Relays)); err != nil {
		return err
	}
	log.Infow("invite accepted; sharing keys with the new generation", "cluster", resp.GetClusterId(), "generation", resp.GetOpened().GetNumber())

	// Wait until our generation commits (we become active) and the leader
	// promotes us, or until it aborts (we are rejected, rule J5). While the
	// joiner is queued (its generation has not opened), JoinTimeout bounds
	// the wait; once it has, the generation's deadline does (plus slack for
	// the abort to reach this node).
	// It wakes on every change (ledger, Raft configuration, leader), and
	// at its own deadlines.
	lastReport := n.now()
	queuedUntil := n.now().Add(n.cfg.JoinTimeout)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		changed := n.changed.C()
		var me generations.Member
		var short generations.Shortfall
		var hasShort bool
		var open generations.Generation
		var hasOpen bool
		n.view(func(l *generations.Ledger) {
			me, _ = l.Member(n.host.ID())
			short, hasShort = l.JoinShortfall(n.host.ID())
			open, hasOpen = l.Open()
		})
		switch {
		case me.Status == generations.StatusActive && n.isVoter():
			if n.dropForeignKey() {
				// It was admitted before it was killed, and this process's
				// K is not the one the cluster holds: it unlocks from its
				// shares like any restarted member.
				log.Infow("this node was admitted before it restarted; locked until a threshold of its shares is back", "cluster", n.ClusterID())
			}
			n.events.publish(Event{Type: EventJoined, Peer: n.host.ID(), Detail: resp.GetClusterId()})
			log.Infow("joined the cluster", "cluster", n.ClusterID())
			return nil
		case me.Status == generations.StatusRejected:
			return fmt.Errorf("%w: the generation opened for this node aborted: %s", ErrJoinRejected, me.Reason)
		case n.joinGaveUp.Load():
			return fmt.Errorf("%w: this node restarted mid-join after its first key was escrowed, and that key is gone; ask for a new invite", ErrJoinRejected)
		}
		var until time.Time
		if hasShort {
			until = open.Deadline.Add(5 * time.Second)
		} else if jg := n.joinGen.Load(); jg != nil && !hasOpen {
			until = n.now().Add(time.Second) // the ledger has not caught up: keep waiting
			if queuedUntil.Before(until) {
				until = queuedUntil
			}
		} else {
			until = queuedUntil
		}
		if hasShort && n.since(lastReport) > 5*time.Second {
			log.Infow("join in progress", "progress", short.String())
			lastReport = n.now()
		}
		if n.now().After(until) {
			msg := "the ledger has not reached this node"
			if hasShort {
				msg = short.String()
			}
			n.giveUpJoin(open, hasShort)
			return fmt.Errorf("%w: not admitted in time: %s", ErrJoinRejected, msg)
		}
		wake := min(n.until(until), 5*time.Second) // the deadline, or the next progress line
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(wake, time.Millisecond))
		select {
		case <-ctx.Done():
			n.giveUpJoin(open, hasShort)
			return fmt.Errorf("%w: %v", ErrJoinRejected, ctx.Err())
		case <-changed:
		case <-timer.C:
		}
	}
}

// giveUpJoin aborts the open generation this joiner is a joiner of, so that
// nobody waits for it until the deadline (a joiner may always abort its own
// generation).
func (n *Node) giveUpJoin(open generations.Generation, isJoiner bool) {
	if !isJoiner || !slices.Contains(open.Joiners, n.host.ID()) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.applyResult(ctx, generations.NewAbortGeneration(open.Number, n.now())); err != nil {
		log.Infow("could not abort this joiner's generation on giving up", "generation", open.Number, "err", err)
		return
	}
	log.Infow("gave up joining; aborted its generation", "generation", open.Number)
}

// dialAll connects to each peer not yet connected, in the background.
func (n *Node) dialAll(ctx context.Context, infos []peer.AddrInfo) {
	for _, ai := range infos {
		if n.connected(ai.ID) {
			continue
		}
		go func() {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := n.host.Connect(network.WithAllowLimitedConn(dctx, "p2pkey-join"), ai); err != nil {
				log.Debugw("dial member", "peer", ai.ID, "err", err)
			}
		}()
	}
}

func (n *Node) requestJoin(ctx context.Context, ai peer.AddrInfo, inv Invite) (*pb.JoinResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := n.host.Connect(cctx, ai); err != nil {
		return nil, fmt.Errorf("dial %s: %w", ai.ID, err)
	}
	cmd, err := n.joinCommand(inv)
	if err != nil {
		return nil, err
	}
	req := &pb.JoinRequest{Version: joinVersion, ClusterId: inv.ClusterID, Command: cmd, Addrs: p2p.AddrInfoStrings(n.host)}
	resp, err := wire.Call[pb.JoinResponse](network.WithAllowLimitedConn(ctx, "p2pkey-join"), n.host, ai.ID, joinProto, req)
	if err != nil {
		return nil, err
	}
	if err := checkJoinResponse(resp); err != nil {
		return nil, err
	}
	switch code := resp.GetErrorCode(); code {
	case "":
		if resp.GetClusterId() != inv.ClusterID {
			return nil, fmt.Errorf("%w: member answered for cluster %s", ErrWrongCluster, resp.GetClusterId())
		}
		return resp, nil
	case codeWrongCluster:
		return nil, fmt.Errorf("%w: %s", ErrWrongCluster, resp.GetErrorMessage())
	case codeRateLimited:
		return nil, ErrJoinRateLimit
	case codeUnavailable:
		return nil, fmt.Errorf("member %s cannot take joins now: %s", ai.ID, resp.GetErrorMessage())
	default:
		if sentinel := generations.ErrorByCode(code); sentinel != nil {
			return nil, fmt.Errorf("%w: %w", ErrJoinRefused, sentinel)
		}
		return nil, fmt.Errorf("%w: %s", ErrJoinRefused, resp.GetErrorMessage())
	}
}

// joinCommand is this node's signed ConsumeInvite for inv, with the invite
// proof: what it sends instead of the secret.
func (n *Node) joinCommand(inv Invite) ([]byte, error) {
	_, invPriv, err := inv.Key()
	if err != nil {
		return nil, err
	}
	now := n.now()
	addrs := joinerAddrs(p2p.AddrInfoStrings(n.host), n.host.ID())
	cmd := generations.NewConsumeInviteWithAddrs(inv.Hash(), n.host.ID(), inv.ClusterID, addrs, now.Add(n.cfg.GenerationTimeout), now)
	if err := generations.ProveInvite(cmd, inv.ClusterID, invPriv); err != nil {
		return nil, err
	}
	n.proposeMu.Lock()
	defer n.proposeMu.Unlock()
	seq := max(n.lastSeq+1, uint64(now.UnixNano()))
	n.lastSeq = seq
	if err := generations.Sign(cmd, n.priv, inv.ClusterID, seq); err != nil {
		return nil, err
	}
	return generations.EncodeCommand(cmd)
}

// resume answers a joiner that presents the invite it already consumed and
// is still joining with (it restarted mid-join): it is told its generation
// again rather than refused. A joiner admitted (active) before it was killed
// with no Raft state yet is answered too, with the members and the leader
// and no generation: it catches up as a voter and then unlocks like any
// restarted member (issue 12). It reports whether resp was filled so.
func (js *joinService) resume(remote peer.ID, cmd *gpb.Command, err error, resp *pb.JoinResponse) bool {
	if cmd == nil || !errors.Is(err, generations.ErrInviteUsed) {
		return false
	}
	ok := false
	js.n.view(func(l *generations.Ledger) {
		inv, found := l.Invite(cmd.GetConsumeInvite().GetHash())
		m, _ := l.Member(remote)
		if !found || inv.UsedBy != remote || (m.Status != generations.StatusJoining && m.Status != generations.StatusActive) {
			return
		}
		ok = true
		resp.Admitted = m.Status == generations.StatusActive
		if g, open := l.Open(); open && m.Status == generations.StatusJoining && slices.Contains(g.Members, remote) {
			resp.Opened = openedMessage(g)
		}
	})
	if !ok {
		return false
	}
	log.Infow("joiner resumes its join", "peer", remote, "generation", resp.GetOpened().GetNumber())
	resp.Members = js.n.memberPeers()
	resp.Leader = []byte(js.n.cons.Leader())
	return true
}

// joinGeneration is the generation opened for a joiner, as the member that
// took its invite described it. The joiner trusts it as far as it trusts that
// member (named in its invite): it shares its own key into the generation
// and accepts its members' shares before its ledger has caught up. The
// ledger still checks every receipt.
type joinGeneration struct {
	Number    uint64
	Members   []peer.ID
	Threshold int
}

func (jg *joinGeneration) generation() generations.Generation {
	return generations.Generation{Number: jg.Number, State: generations.StateOpen, Members: jg.Members, Threshold: jg.Threshold}
}

// decodeJoinGeneration reads the join response's generation; nil when the
// joiner waits for the next one.
func decodeJoinGeneration(resp *pb.JoinResponse) (*joinGeneration, error) {
	return openedGeneration(resp.GetOpened())
}

// joinerAddrs keeps the joiner's claimed addresses that parse and name the
// joiner itself, within the ledger's bounds.
func joinerAddrs(claimed []string, joiner peer.ID) []string {
	var out []string
	for _, a := range claimed {
		if len(out) == generations.MaxAddrs || len(a) > generations.MaxAddrLen {
			break
		}
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			continue
		}
		if ai, err := peer.AddrInfoFromP2pAddr(m); err == nil && ai.ID == joiner {
			out = append(out, a)
		}
	}
	return out
}

func addrInfos(addrs []string) ([]peer.AddrInfo, error) {
	var mas []ma.Multiaddr
	for _, a := range addrs {
		m, err := ma.NewMultiaddr(a)
		if err != nil {
			return nil, fmt.Errorf("%w: address %q: %v", ErrBadInvite, a, err)
		}
		mas = append(mas, m)
	}
	infos, err := peer.AddrInfosFromP2pAddrs(mas...)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	return infos, nil
}

func (n *Node) addAddrs(id peer.ID, addrs []string) {
	for _, a := range addrs {
		if m, err := ma.NewMultiaddr(a); err == nil {
			n.host.Peerstore().AddAddr(id, m, time.Hour)
		}
	}
}
