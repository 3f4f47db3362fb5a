package shares

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/p2pkey/p2pkey/p2p"
	"github.com/p2pkey/p2pkey/shares/pb"
	"github.com/p2pkey/p2pkey/wire"
)

// Policy is the node's decision, from the custody ledger, of who may push
// and fetch. The service asks it after its own checks (authenticated owner,
// binding, cluster, size, rate). A refusal that wraps one of this package's
// sentinels (ErrGenerationNotOpen, ErrOwnerRemoved, ErrForbidden, ...)
// crosses the wire with that code; any other refusal is ErrForbidden. Its
// text is sent to the owner, so it must not hold secrets.
type Policy interface {
	// AllowPush: owner may store its envelope for gen on this holder, i.e.
	// gen is open and contains both (rule S2).
	AllowPush(owner peer.ID, gen uint64) error
	// AllowFetch: owner may fetch back its envelope for gen, i.e. it has
	// not been removed (rules S3, R1).
	AllowFetch(owner peer.ID, gen uint64) error
}

// Service is both sides of the share protocol for one node: the holder's
// stream handler and the owner's Push and Fetch.
type Service struct {
	host      host.Host
	store     *Store
	self      crypto.PrivKey
	selfID    peer.ID
	clusterID string
	policy    Policy
	cfg       config
	log       *zap.SugaredLogger
	limiter   *p2p.PeerLimiter
	wire      wire.Protocol   // shareWire with this service's timeout
	ctx       context.Context // ends at Close: resets outgoing streams
	cancel    context.CancelFunc

	mu      sync.Mutex
	closed  bool
	streams map[network.Stream]struct{}
	wg      sync.WaitGroup

	stats       stats
	auditFailed atomic.Bool // the last audit append failed (logged once)
	deleteHook  *deleteHook // installed on store while open
}

// NewService registers the share protocol handler on h. self must be h's
// identity key (receipts are checked against h's peer ID), and store is the
// node's envelope store. The service does not own h or store.
func NewService(h host.Host, store *Store, self crypto.PrivKey, clusterID string, policy Policy, opts ...Option) (*Service, error) {
	if h == nil || store == nil || self == nil || policy == nil {
		return nil, errors.New("shares: NewService needs a host, a store, a key and a policy")
	}
	if err := validateClusterID(clusterID); err != nil {
		return nil, fmt.Errorf("shares: %w", err)
	}
	selfID, err := peer.IDFromPrivateKey(self)
	if err != nil {
		return nil, fmt.Errorf("shares: identity key: %w", err)
	}
	if selfID != h.ID() {
		return nil, fmt.Errorf("shares: identity key is %s, host is %s", selfID, h.ID())
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	s := &Service{
		host:      h,
		store:     store,
		self:      self,
		selfID:    selfID,
		clusterID: clusterID,
		policy:    policy,
		cfg:       cfg,
		log:       cfg.log.SugaredLogger.With("cluster", clusterID),
		limiter:   p2p.NewPeerLimiter(cfg.fetchRate, cfg.fetchBurst),
		wire:      shareWire,
		streams:   make(map[network.Stream]struct{}),
	}
	s.wire.Timeout = cfg.timeout
	s.ctx, s.cancel = context.WithCancel(context.Background())
	hook := deleteHook(s.deleted)
	s.deleteHook = &hook
	store.onDelete.Store(s.deleteHook)
	h.SetStreamHandler(ProtocolID, s.handleStream)
	return s, nil
}

// Close removes the handler, resets the streams in flight on both sides,
// and waits for their handlers to return. It does not close the store.
func (s *Service) Close() error {
	s.host.RemoveStreamHandler(ProtocolID)
	s.mu.Lock()
	s.closed = true
	s.cancel()
	for str := range s.streams {
		str.Reset()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.store.onDelete.CompareAndSwap(s.deleteHook, nil)
	return nil
}

// track registers a stream so Close can reset it; false once closed.
func (s *Service) track(str network.Stream) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.streams[str] = struct{}{}
	s.wg.Add(1)
	return true
}

// begin registers an outgoing exchange so Close waits for it; false once
// closed. The caller calls s.wg.Done when it ends.
func (s *Service) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

func (s *Service) untrack(str network.Stream) {
	s.mu.Lock()
	delete(s.streams, str)
	s.mu.Unlock()
	s.wg.Done()
}

// handleStream serves one request, on package wire's skeleton (resource
// scope, reservation of the largest message, deadline, bounded read, Reset
// on error, Close on success). A stream that cannot be read (garbage,
// oversized, too slow) or whose request is malformed is reset without an
// answer; a readable request that is refused gets a response with the
// refusal's code, and the stream is closed. Every refusal is recorded.
func (s *Service) handleStream(str network.Stream) {
	if !s.track(str) {
		str.Reset()
		return
	}
	defer s.untrack(str)
	remote := str.Conn().RemotePeer()
	// Whose envelope it is: the authenticated remote peer's, the only one
	// it may push or fetch.
	ev := Event{Op: opUnknown, Owner: remote, Holder: s.selfID, Remote: remote}
	read, ok := false, false
	err := wire.Serve(s.ctx, str, s.wire, func(_ context.Context, m *pb.Request) (*pb.Response, error) {
		read = true
		req, err := validateRequest(m)
		if err != nil {
			s.refused(ev, err)
			return nil, err // reset, no answer
		}
		ev.Op, ev.Generation = req.op, req.gen
		var resp *pb.Response
		switch req.op {
		case opPush:
			resp, err = s.servePush(remote, req, &ev)
		case opFetch:
			resp, err = s.serveFetch(remote, req, &ev)
		}
		if err != nil {
			s.refused(ev, err)
			return errorResponse(s.clusterID, err), nil
		}
		// Recorded before the answer leaves: the record of a release
		// precedes it, and the owner's next request is recorded after it.
		s.served(ev)
		ok = true
		return resp, nil
	})
	switch {
	case !read:
		s.refused(ev, requestError(err))
	case err != nil && ok:
		s.log.Debugw("share response not sent", "op", ev.Op, "peer", remote, "generation", ev.Generation, "err", err)
	case err == nil && ok && s.cfg.tracer != nil:
		s.cfg.tracer.Served(ev.Op, remote, ev.Generation)
	}
}

// servePush checks and stores a pushed envelope and returns the receipt.
// It sets ev.Split once the envelope is read.
func (s *Service) servePush(remote peer.ID, req *request, ev *Event) (*pb.Response, error) {
	if req.clusterID != s.clusterID {
		return nil, fmt.Errorf("%w: request for cluster %q", ErrWrongCluster, req.clusterID)
	}
	env, err := ParseEnvelope(req.envelope)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	b := env.Binding
	ev.Split = b.Split
	switch {
	case b.ClusterID != s.clusterID:
		return nil, fmt.Errorf("%w: envelope bound to cluster %q", ErrWrongCluster, b.ClusterID)
	case b.Generation != req.gen:
		return nil, fmt.Errorf("%w: envelope bound to generation %d, request for %d", ErrBadRequest, b.Generation, req.gen)
	case b.Owner != remote:
		return nil, fmt.Errorf("%w: envelope owned by %s, pushed by %s", ErrForbidden, b.Owner, remote)
	case b.Holder != s.selfID:
		return nil, fmt.Errorf("%w: envelope addressed to %s, not this holder", ErrForbidden, b.Holder)
	}
	if err := s.policy.AllowPush(remote, req.gen); err != nil {
		return nil, policyError(err)
	}
	digest := sha256.Sum256(req.envelope)
	sig, err := s.store1(env, digest)
	if err != nil {
		return nil, err
	}
	return &pb.Response{
		Version:          WireVersion,
		ClusterId:        s.clusterID,
		Code:             pb.Response_OK,
		ReceiptSignature: sig,
		Digest:           digest[:],
	}, nil
}

// store1 stores env as the only envelope of its (generation, owner) and
// signs the receipt. Storing the same bytes again signs the same receipt
// (Ed25519 signatures are deterministic), so a retried push is idempotent.
// Another envelope of the same split is a duplicate; one of another split
// goes to the SplitDecision, which may have it replace the stored one.
func (s *Service) store1(env *Envelope, digest [32]byte) ([]byte, error) {
	b := env.Binding
	err := s.store.Put(b.Generation, b.Owner, env)
	if errors.Is(err, ErrExists) {
		err = s.replace(env)
	}
	if err != nil {
		if codeOf(err) != pb.Response_INTERNAL {
			return nil, err
		}
		return nil, fmt.Errorf("%w: store: %w", ErrInternal, err)
	}
	sig, err := SignReceipt(s.self, s.clusterID, b.Generation, b.Owner, b.Split, digest)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInternal, err)
	}
	return sig, nil
}

// replace handles a push for a (generation, owner) that already has another
// envelope: same split, it is a duplicate (rule S2); another split, the
// SplitDecision says whether the new one replaces the old.
func (s *Service) replace(env *Envelope) error {
	b := env.Binding
	old, err := s.store.Get(b.Generation, b.Owner)
	switch {
	case errors.Is(err, ErrNotFound):
		// Deleted in between: store it as the first one.
		if err := s.store.Put(b.Generation, b.Owner, env); err != nil {
			if errors.Is(err, ErrExists) {
				return fmt.Errorf("%w: generation %d, owner %s: concurrent pushes", ErrDuplicate, b.Generation, b.Owner)
			}
			return err
		}
		return nil
	case err != nil:
		return err
	}
	if old.Binding.Split == b.Split {
		return fmt.Errorf("%w: generation %d, owner %s, split %x", ErrDuplicate, b.Generation, b.Owner, b.Split[:])
	}
	if err := s.cfg.splits(b.Owner, b.Generation, old.Binding.Split, b.Split); err != nil {
		if c := codeOf(err); c == pb.Response_INTERNAL && !errors.Is(err, ErrInternal) {
			return fmt.Errorf("%w: %w", ErrDuplicate, err)
		}
		return err
	}
	if err := s.store.Replace(b.Generation, b.Owner, old, env); err != nil {
		if errors.Is(err, ErrExists) {
			return fmt.Errorf("%w: generation %d, owner %s: concurrent pushes", ErrDuplicate, b.Generation, b.Owner)
		}
		return err
	}
	return nil
}

// serveFetch returns the caller's own envelope. The store is keyed by the
// authenticated remote peer, so nobody can name another owner's envelope.
// It sets ev.Split to the split of the envelope it found.
func (s *Service) serveFetch(remote peer.ID, req *request, ev *Event) (*pb.Response, error) {
	if req.clusterID != s.clusterID {
		return nil, fmt.Errorf("%w: request for cluster %q", ErrWrongCluster, req.clusterID)
	}
	if !s.limiter.Allow(remote, time.Now()) {
		return nil, fmt.Errorf("%w: fetches from %s", ErrRateLimited, remote)
	}
	if err := s.policy.AllowFetch(remote, req.gen); err != nil {
		return nil, policyError(err)
	}
	env, err := s.store.Get(req.gen, remote)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: no envelope of %s for generation %d", ErrNotFound, remote, req.gen)
		}
		return nil, fmt.Errorf("%w: store: %w", ErrInternal, err)
	}
	b := env.Binding
	ev.Split = b.Split
	if b.Owner != remote || b.Holder != s.selfID || b.ClusterID != s.clusterID || b.Generation != req.gen {
		// Get checks the key against the binding; this is defence in depth.
		return nil, fmt.Errorf("%w: stored envelope does not match", ErrInternal)
	}
	raw, err := env.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInternal, err)
	}
	return &pb.Response{Version: WireVersion, ClusterId: s.clusterID, Code: pb.Response_OK, Envelope: raw}, nil
}

// refused records a refused (or unreadable) request. A refusal is part
// of normal operation (a fetch of a generation this holder does not hold,
// a push racing the ledger), so it is logged at INFO, with its wire code as
// the reason and its text, which never holds secrets.
func (s *Service) refused(ev Event, err error) {
	ev.Kind, ev.Reason = EventRefused, codeOf(err).String()
	s.record(ev, "err", err)
	if s.cfg.tracer != nil {
		s.cfg.tracer.Refused(ev.Op, ev.Remote, ev.Generation, err)
	}
}

// served records a push stored or a fetch about to be answered.
func (s *Service) served(ev Event) {
	ev.Kind = EventServed
	if ev.Op == opPush {
		ev.Kind = EventStored
	}
	s.record(ev)
}

// selfEvent is the event of this node's own push to, or fetch from, its
// own store: it is owner, holder and remote peer at once.
func (s *Service) selfEvent(op string, gen uint64) Event {
	return Event{Op: op, Owner: s.selfID, Holder: s.selfID, Generation: gen, Remote: s.selfID}
}

// deleted is the store's delete hook: it records each deleted envelope.
func (s *Service) deleted(reason string, gone []Binding) {
	now := time.Now().UTC()
	for _, b := range gone {
		holder := b.Holder
		if holder == "" {
			holder = s.selfID // a record that did not parse
		}
		s.record(Event{Time: now, Kind: EventDeleted, Owner: b.Owner, Holder: holder,
			Generation: b.Generation, Split: b.Split, Reason: reason})
	}
}

// Push sends env to holder and returns the holder's receipt, after
// checking the receipt's signature against the holder's peer ID and its
// digest and split against env. env must be sealed by this node, for this
// cluster and for holder. Pushing to this node itself stores env in the
// local store and signs the receipt locally, without asking the Policy (the
// SplitDecision still decides a change of split).
func (s *Service) Push(ctx context.Context, holder peer.ID, env *Envelope) (_ *Receipt, err error) {
	start := time.Now()
	defer func() { s.observeRequest(opPush, holder, start, err) }()
	raw, err := env.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes, limit %d", ErrTooLarge, len(raw), MaxEnvelopeSize)
	}
	b := env.Binding
	switch {
	case b.ClusterID != s.clusterID:
		return nil, fmt.Errorf("%w: envelope bound to cluster %q", ErrWrongCluster, b.ClusterID)
	case b.Owner != s.selfID:
		return nil, fmt.Errorf("%w: envelope owned by %s, not by this node", ErrForbidden, b.Owner)
	case b.Holder != holder:
		return nil, fmt.Errorf("%w: envelope addressed to %s, pushed to %s", ErrBadRequest, b.Holder, holder)
	}
	digest := sha256.Sum256(raw)
	var sig []byte
	if holder == s.selfID {
		ev := s.selfEvent(opPush, b.Generation)
		ev.Split = b.Split
		if sig, err = s.store1(env, digest); err != nil {
			s.refused(ev, err)
			return nil, err
		}
		s.served(ev)
	} else {
		resp, err := s.roundTrip(ctx, holder, pushRequest(s.clusterID, b.Generation, raw))
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(resp.GetDigest(), digest[:]) {
			return nil, fmt.Errorf("%w: receipt digest from %s does not match the envelope", ErrBadResponse, holder)
		}
		sig = resp.GetReceiptSignature()
	}
	r := &Receipt{Generation: b.Generation, Owner: s.selfID, Holder: holder, Split: b.Split, Digest: digest, Signature: sig}
	if err := r.Verify(s.clusterID); err != nil {
		return nil, fmt.Errorf("%w: receipt from %s: %w", ErrBadResponse, holder, err)
	}
	return r, nil
}

// Fetch asks holder for this node's envelope of generation gen, and checks
// that it is bound to (this cluster, this node, gen, holder). It does not
// open it. The envelope's Binding.Split says which split it belongs to:
// combine only shares of one split. Fetching from this node itself reads
// the local store.
func (s *Service) Fetch(ctx context.Context, holder peer.ID, gen uint64) (env *Envelope, err error) {
	start := time.Now()
	defer func() { s.observeRequest(opFetch, holder, start, err) }()
	if holder == s.selfID {
		ev := s.selfEvent(opFetch, gen)
		if env, err = s.store.Get(gen, s.selfID); err != nil {
			s.refused(ev, err)
			return nil, err
		}
		ev.Split = env.Binding.Split
		s.served(ev)
	} else {
		resp, err := s.roundTrip(ctx, holder, fetchRequest(s.clusterID, gen))
		if err != nil {
			return nil, err
		}
		if env, err = ParseEnvelope(resp.GetEnvelope()); err != nil {
			return nil, fmt.Errorf("%w: envelope from %s: %w", ErrBadResponse, holder, err)
		}
	}
	got := env.Binding
	if got.ClusterID != s.clusterID || got.Owner != s.selfID || got.Generation != gen || got.Holder != holder {
		return nil, fmt.Errorf("%w: envelope from %s is bound to another (cluster, owner, generation, holder)", ErrBadResponse, holder)
	}
	return env, nil
}

// roundTrip sends one request to p and returns its OK response, or the
// refusal as an error wrapping its sentinel. Streams may run over limited
// (relayed) connections (rule N1). Close resets the stream.
func (s *Service) roundTrip(ctx context.Context, p peer.ID, req *pb.Request) (*pb.Response, error) {
	if !s.begin() {
		return nil, ErrClosed
	}
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.ctx, cancel)()
	resp, err := wire.Call[pb.Response](network.WithAllowLimitedConn(ctx, "p2pkey-shares"), s.host, p, s.wire, req)
	if err != nil {
		return nil, responseError(p, err)
	}
	if err := checkResponse(resp); err != nil {
		return nil, fmt.Errorf("shares: response from %s: %w", p, err)
	}
	if resp.GetClusterId() != s.clusterID {
		return nil, fmt.Errorf("%w: %s answers for cluster %q", ErrWrongCluster, p, resp.GetClusterId())
	}
	if resp.GetCode() != pb.Response_OK {
		return nil, remoteError(resp.GetCode(), resp.GetMessage(), p)
	}
	return resp, nil
}
