package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pkey/p2pkey/node"
)

// memberVotes is the removal vote count of one member in `status --json`
// (rule R2). Each field is nil when the daemon does not send it.
type memberVotes struct {
	PeerID         string     `json:"peer_id"`
	RemoveVotes    *voteCount `json:"remove_votes"`
	ReinstateVotes *voteCount `json:"reinstate_votes"`
	VotesNeeded    *int       `json:"votes_needed"`
}

// voteCount is a number of votes, sent either as the list of the voters'
// peer IDs or as a count.
type voteCount int

// UnmarshalJSON takes a list of voters or a number.
func (v *voteCount) UnmarshalJSON(b []byte) error {
	var voters []string
	if err := json.Unmarshal(b, &voters); err == nil {
		*v = voteCount(len(voters))
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("a vote count is a list of peer IDs or a number: %w", err)
	}
	*v = voteCount(n)
	return nil
}

// decodeStatus decodes the daemon's status JSON, and the members' vote
// counts by peer ID.
func decodeStatus(raw json.RawMessage) (node.Status, map[string]memberVotes, error) {
	var st node.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, nil, fmt.Errorf("status from the daemon: %w", err)
	}
	var v struct {
		Members []memberVotes `json:"members"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return st, nil, fmt.Errorf("status from the daemon: %w", err)
	}
	votes := make(map[string]memberVotes, len(v.Members))
	for _, m := range v.Members {
		votes[m.PeerID] = m
	}
	return st, votes, nil
}

// note is the vote part of a member's NOTE column: shown for a suspended
// member, and for any member with votes cast about it; "" when the daemon
// sends no counts.
func (v memberVotes) note(status string) string {
	if v.RemoveVotes == nil && v.ReinstateVotes == nil {
		return ""
	}
	rm, re := deref(v.RemoveVotes), deref(v.ReinstateVotes)
	if status != "suspended" && rm == 0 && re == 0 {
		return ""
	}
	count := func(kind string, n int) string {
		if v.VotesNeeded != nil {
			return fmt.Sprintf("%s votes %d of %d", kind, n, *v.VotesNeeded)
		}
		return fmt.Sprintf("%s votes %d", kind, n)
	}
	return count("remove", rm) + ", " + count("reinstate", re)
}

func deref(p *voteCount) int {
	if p == nil {
		return 0
	}
	return int(*p)
}

// clusterWarning warns when the cluster has fewer than 3 active members, or
// is "" (rules G1, K1).
func clusterWarning(st node.Status) string {
	n := 0
	for _, m := range st.Members {
		if m.Status == "active" {
			n++
		}
	}
	switch {
	case n == 0 || n >= 3:
		return ""
	case n == 1:
		return "only 1 member: a cluster of one cannot protect K: invite a second node"
	default:
		return fmt.Sprintf("only %d members: one node down blocks the other's unlock", n)
	}
}

// decodeKit returns the recovery kit part of the daemon's status JSON, or
// nil when there is none (or the daemon does not send it).
func decodeKit(raw json.RawMessage) *node.RecoveryKitStatus {
	var v struct {
		RecoveryKit *node.RecoveryKitStatus `json:"recovery_kit"`
	}
	if json.Unmarshal(raw, &v) != nil {
		return nil
	}
	return v.RecoveryKit
}

// kitLine is status's recovery line.
func kitLine(k *node.RecoveryKitStatus) string {
	switch {
	case k == nil:
		return "no recovery kit made"
	case k.CurrentKey:
		return fmt.Sprintf("recovery kit made %s for the current key (generation %d, %d recipient(s))", k.CreatedAt.Format(time.RFC3339), k.Generation, len(k.Recipients))
	default:
		return fmt.Sprintf("the last recovery kit (%s) is for an earlier key, not the current one", k.CreatedAt.Format(time.RFC3339))
	}
}
