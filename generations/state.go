package generations

import (
	"fmt"

	"github.com/p2pkey/p2pkey/generations/pb"
)

// GenerationState is the lifecycle of a generation:
//
//	open ──commit──▶ committed ──retire──▶ retired
//	  │
//	  └──abort──▶ aborted
//
// Aborted and retired are terminal: nothing ever leaves them (rules G3, G4).
type GenerationState uint8

// Generation states. The values match pb.GenerationState.
const (
	StateUnknown   GenerationState = 0
	StateOpen      GenerationState = 1
	StateCommitted GenerationState = 2
	StateAborted   GenerationState = 3
	StateRetired   GenerationState = 4
)

func (s GenerationState) String() string {
	switch s {
	case StateOpen:
		return "open"
	case StateCommitted:
		return "committed"
	case StateAborted:
		return "aborted"
	case StateRetired:
		return "retired"
	default:
		return fmt.Sprintf("state(%d)", uint8(s))
	}
}

// Event is something that moves a generation to its next state.
type Event uint8

// Generation events.
const (
	EventCommit Event = iota + 1
	EventAbort
	EventRetire
)

func (e Event) String() string {
	switch e {
	case EventCommit:
		return "commit"
	case EventAbort:
		return "abort"
	case EventRetire:
		return "retire"
	default:
		return fmt.Sprintf("event(%d)", uint8(e))
	}
}

// transitions is the whole lifecycle table: the state each event leads to
// from each state. A missing entry is an invalid transition, and
// transitionErrors says which sentinel reports it.
var transitions = map[GenerationState]map[Event]GenerationState{
	StateOpen: {
		EventCommit: StateCommitted,
		EventAbort:  StateAborted,
	},
	StateCommitted: {
		EventRetire: StateRetired,
	},
}

// transitionErrors names the broken rule for every invalid (state, event).
var transitionErrors = map[GenerationState]map[Event]error{
	StateOpen: {
		EventRetire: ErrGenerationNotCommitted,
	},
	StateCommitted: {
		EventCommit: ErrGenerationCommitted,
		EventAbort:  ErrGenerationCommitted,
	},
	StateAborted: {
		EventCommit: ErrGenerationAborted,
		EventAbort:  ErrGenerationAborted,
		EventRetire: ErrGenerationAborted,
	},
	StateRetired: {
		EventCommit: ErrGenerationRetired,
		EventAbort:  ErrGenerationRetired,
		EventRetire: ErrGenerationRetired,
	},
}

// Next returns the state that e leads to from s, or the sentinel error of
// the rule the transition would break.
func (s GenerationState) Next(e Event) (GenerationState, error) {
	if next, ok := transitions[s][e]; ok {
		return next, nil
	}
	if err, ok := transitionErrors[s][e]; ok {
		return s, fmt.Errorf("%w: cannot %s a %s generation", err, e, s)
	}
	return s, fmt.Errorf("%w: %s on %s", ErrInvalidState, e, s)
}

// Live reports whether envelopes of a generation in this state are kept.
func (s GenerationState) Live() bool { return s == StateOpen || s == StateCommitted }

// MemberStatus is where a peer stands in the cluster.
type MemberStatus uint8

// Member statuses. The values match pb.MemberStatus.
const (
	StatusUnknown  MemberStatus = 0
	StatusJoining  MemberStatus = 1 // consumed an invite, waiting for its generation to commit
	StatusActive   MemberStatus = 2 // full, voting member
	StatusRemoved  MemberStatus = 3 // revoked for good (R1)
	StatusRejected MemberStatus = 4 // its generation was aborted (J5); may rejoin with a new invite
	StatusLapsed   MemberStatus = 5 // its newest escrow was retired by the retention bound; may rejoin with a new invite
)

func (s MemberStatus) String() string {
	switch s {
	case StatusJoining:
		return "joining"
	case StatusActive:
		return "active"
	case StatusRemoved:
		return "removed"
	case StatusRejected:
		return "rejected"
	case StatusLapsed:
		return "lapsed"
	default:
		return fmt.Sprintf("status(%d)", uint8(s))
	}
}

// IsMember reports whether the status counts as a current member (joining or
// active). A lapsed peer is not a current member: it is in no new generation
// and must be invited again, but unlike a removed one it may be.
func (s MemberStatus) IsMember() bool { return s == StatusJoining || s == StatusActive }

// MemberEvent is something that moves a member to its next status:
//
//	(none), rejected, lapsed ──join──▶ joining ──commit──▶ active ──lapse──▶ lapsed
//	(none) ──admit──▶ active
//	joining ──abort──▶ rejected
//	joining, active, lapsed ──remove──▶ removed
//
// A peer the ledger has never recorded has StatusUnknown. Removed is
// terminal (R1). A rejected or lapsed peer is never admitted directly:
// direct admission is allowed only before the first generation, and a peer
// is rejected or lapsed only after one.
type MemberEvent uint8

// Member events.
const (
	// MemberJoin: the peer consumed an invite with a deadline and waits
	// for the generation that takes it in.
	MemberJoin MemberEvent = iota + 1
	// MemberAdmit: the peer is admitted at once, as the founder at
	// Bootstrap or by an invite without a deadline (direct admission).
	MemberAdmit
	// MemberCommit: the generation the peer joins committed (J4).
	MemberCommit
	// MemberAbort: the generation the peer joins was aborted (J5).
	MemberAbort
	// MemberLapse: the peer's newest escrow was retired by the retention
	// bound.
	MemberLapse
	// MemberRemove: the peer left or was voted out (R1, R2).
	MemberRemove
)

func (e MemberEvent) String() string {
	switch e {
	case MemberJoin:
		return "join"
	case MemberAdmit:
		return "admit"
	case MemberCommit:
		return "commit"
	case MemberAbort:
		return "abort"
	case MemberLapse:
		return "lapse"
	case MemberRemove:
		return "remove"
	default:
		return fmt.Sprintf("member-event(%d)", uint8(e))
	}
}

// memberTransitions is the whole member lifecycle table: the status each
// event leads to from each status. A missing entry is an invalid
// transition, and memberTransitionErrors says which sentinel reports it.
var memberTransitions = map[MemberStatus]map[MemberEvent]MemberStatus{
	StatusUnknown: {
		MemberJoin:  StatusJoining,
		MemberAdmit: StatusActive,
	},
	StatusJoining: {
		MemberCommit: StatusActive,
		MemberAbort:  StatusRejected,
		MemberRemove: StatusRemoved,
	},
	StatusActive: {
		MemberLapse:  StatusLapsed,
		MemberRemove: StatusRemoved,
	},
	StatusRejected: {
		MemberJoin: StatusJoining,
	},
	StatusLapsed: {
		MemberJoin:   StatusJoining,
		MemberRemove: StatusRemoved,
	},
}

// memberTransitionErrors names the broken rule for the invalid (status,
// event) pairs that have one; the others are ErrInvalidMemberStatus.
var memberTransitionErrors = map[MemberStatus]map[MemberEvent]error{
	StatusUnknown: {
		MemberCommit: ErrNotMember,
		MemberAbort:  ErrNotMember,
		MemberLapse:  ErrNotMember,
		MemberRemove: ErrNotMember,
	},
	StatusJoining: {
		MemberJoin:  ErrAlreadyMember,
		MemberAdmit: ErrAlreadyMember,
		MemberLapse: ErrNotActive,
	},
	StatusActive: {
		MemberJoin:   ErrAlreadyMember,
		MemberAdmit:  ErrAlreadyMember,
		MemberCommit: ErrAlreadyMember,
	},
	StatusRejected: {
		MemberAdmit:  ErrDirectAdmission,
		MemberCommit: ErrNotMember,
		MemberAbort:  ErrNotMember,
		MemberLapse:  ErrNotMember,
		MemberRemove: ErrNotMember,
	},
	StatusLapsed: {
		MemberAdmit:  ErrDirectAdmission,
		MemberCommit: ErrMemberLapsed,
		MemberAbort:  ErrMemberLapsed,
		MemberLapse:  ErrMemberLapsed,
	},
	StatusRemoved: {
		MemberJoin:   ErrMemberRemoved,
		MemberAdmit:  ErrMemberRemoved,
		MemberCommit: ErrMemberRemoved,
		MemberAbort:  ErrMemberRemoved,
		MemberLapse:  ErrMemberRemoved,
		MemberRemove: ErrMemberRemoved,
	},
}

// Next returns the status that e leads to from s, or the sentinel error of
// the rule the transition would break.
func (s MemberStatus) Next(e MemberEvent) (MemberStatus, error) {
	if next, ok := memberTransitions[s][e]; ok {
		return next, nil
	}
	if err, ok := memberTransitionErrors[s][e]; ok {
		return s, fmt.Errorf("%w: cannot %s a %s member", err, e, s)
	}
	return s, fmt.Errorf("%w: %s on %s", ErrInvalidMemberStatus, e, s)
}

var (
	_ = pb.GenerationState(StateRetired)
	_ = pb.MemberStatus(StatusLapsed)
)
