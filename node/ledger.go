package node

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/p2pkey/p2pkey/consensus"
	"github.com/p2pkey/p2pkey/generations"
	"github.com/p2pkey/p2pkey/node/pb"
	"google.golang.org/protobuf/proto"
)

// ledgerSM adapts the custody ledger to consensus.StateMachine. It is the
// whole FSM bridge: decoding and every rule live in package generations.
type ledgerSM struct {
	l *generations.Ledger
}

func (s *ledgerSM) Apply(now int64, cmd []byte) ([]byte, error) {
	res, err := s.l.Apply(now, cmd)
	var out []byte
	if err == nil && res.Opened != 0 {
		// A proposer learns the generation it opened from the leader's
		// answer, before its own ledger has applied the entry.
		if g, ok := s.l.Generation(res.Opened); ok {
			out = encodeOpened(g)
		}
	}
	return out, err
}

// openedVersion is the version of pb.OpenedGeneration this node writes and
// reads.
const openedVersion = 1

// encodeOpened is the state-machine result of a command that opened g, the
// same message the join response carries (pb.OpenedGeneration).
func encodeOpened(g generations.Generation) []byte {
	b, _ := proto.Marshal(openedMessage(g))
	return b
}

func openedMessage(g generations.Generation) *pb.OpenedGeneration {
	m := &pb.OpenedGeneration{Version: openedVersion, Number: g.Number, Threshold: uint32(g.Threshold)}
	for _, p := range g.Members {
		m.Members = append(m.Members, []byte(p))
	}
	return m
}

// decodeOpened reads a command's result; ok is false for any result that is
// not a well-formed opened generation.
func decodeOpened(b []byte) (*joinGeneration, bool) {
	var m pb.OpenedGeneration
	if len(b) == 0 || proto.Unmarshal(b, &m) != nil {
		return nil, false
	}
	g, err := openedGeneration(&m)
	return g, err == nil && g != nil
}

// openedGeneration checks an opened-generation message and returns the
// generation it describes (nil for an absent message).
func openedGeneration(m *pb.OpenedGeneration) (*joinGeneration, error) {
	if m == nil {
		return nil, nil
	}
	if m.GetVersion() != openedVersion {
		return nil, fmt.Errorf("opened generation: version %d, want %d", m.GetVersion(), openedVersion)
	}
	if len(m.GetMembers()) > maxJoinMembers {
		return nil, fmt.Errorf("opened generation: more than %d members", maxJoinMembers)
	}
	g := &joinGeneration{Number: m.GetNumber(), Threshold: int(m.GetThreshold())}
	for _, b := range m.GetMembers() {
		id, err := peer.IDFromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("opened generation member: %w", err)
		}
		g.Members = append(g.Members, id)
	}
	if g.Number == 0 || len(g.Members) < 2 || g.Threshold < 1 || g.Threshold > len(g.Members) {
		return nil, fmt.Errorf("generation %d with %d members and threshold %d", g.Number, len(g.Members), g.Threshold)
	}
	return g, nil
}

func (s *ledgerSM) Snapshot() ([]byte, error) { return s.l.Snapshot() }

func (s *ledgerSM) Restore(data []byte) error {
	l := generations.New()
	if err := l.Restore(data); err != nil {
		return err
	}
	s.l = l
	return nil
}

// errorCodec carries the ledger's sentinel errors across forwarding.
type errorCodec struct{}

func (errorCodec) Code(err error) string   { return generations.ErrorCode(err) }
func (errorCodec) Error(code string) error { return generations.ErrorByCode(code) }

var _ consensus.ErrorCodec = errorCodec{}
