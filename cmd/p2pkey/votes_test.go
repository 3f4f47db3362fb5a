package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

var testAct = destructiveAct{
	question: "Leave the cluster?",
	loss:     leaveLoss,
	warning:  sizeWarning(2),
	refusal:  "refusing to leave the cluster without confirmation",
}

// TestConfirm covers every path of the confirmation rule.
func TestConfirm(t *testing.T) {
	code := func(err error) int {
		var se *statusError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &se):
			return se.code
		}
		return exitError
	}
	for _, tc := range []struct {
		name             string
		interactive, yes bool
		input            string
		want             int
		says             string
	}{
		{"--yes", false, true, "", 0, ""},
		{"--yes on a terminal", true, true, "", 0, ""},
		{"no terminal", false, false, "yes\n", exitUsage, "pass --yes"},
		{"terminal, yes", true, false, "yes\n", 0, "Type yes to continue"},
		{"terminal, y", true, false, " Y \n", 0, "K will be unrecoverable"},
		{"terminal, no", true, false, "no\n", exitError, "not confirmed"},
		{"terminal, enter", true, false, "\n", exitError, "not confirmed"},
		{"terminal, end of input", true, false, "", exitUsage, "pass --yes"},
	} {
		var out bytes.Buffer
		err := confirm(strings.NewReader(tc.input), &out, tc.interactive, tc.yes, testAct)
		all := out.String()
		if err != nil {
			all += err.Error()
		}
		if got := code(err); got != tc.want || !strings.Contains(all, tc.says) {
			t.Errorf("%s: exit %d, want %d; output %q", tc.name, got, tc.want, all)
		}
		if !strings.Contains(out.String(), "warning: this leaves the cluster with 2 members") {
			t.Errorf("%s: no size warning in %q", tc.name, out.String())
		}
	}
}

func TestSizeWarning(t *testing.T) {
	for n, want := range map[int]string{
		5: "", 3: "",
		2: "with 2 members, one node down blocks the other's unlock",
		1: "a cluster of one cannot protect K",
		0: "a cluster of one cannot protect K",
	} {
		got := sizeWarning(n)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("%d members: %q, want %q", n, got, want)
		}
	}
}

// TestVoteNote: the vote counts read from status JSON, in either shape, and
// nothing when the daemon sends none.
func TestVoteNote(t *testing.T) {
	for _, tc := range []struct{ status, row, want string }{
		{"suspended", `{"remove_votes":["a"],"votes_needed":2}`, "remove votes 1 of 2, reinstate votes 0 of 2"},
		{"suspended", `{"remove_votes":["a","b"],"reinstate_votes":["c"],"votes_needed":2}`, "remove votes 2 of 2, reinstate votes 1 of 2"},
		{"suspended", `{"remove_votes":1,"reinstate_votes":0}`, "remove votes 1, reinstate votes 0"},
		{"active", `{"remove_votes":[],"votes_needed":2}`, ""},
		{"suspended", `{}`, ""},
	} {
		var v memberVotes
		if err := json.Unmarshal([]byte(tc.row), &v); err != nil {
			t.Fatalf("%s: %v", tc.row, err)
		}
		if got := v.note(tc.status); got != tc.want {
			t.Errorf("%s %s: %q, want %q", tc.status, tc.row, got, tc.want)
		}
	}
}
