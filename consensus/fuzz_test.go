package consensus

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/p2pkey/p2pkey/consensus/pb"
	"google.golang.org/protobuf/encoding/protodelim"
)

func FuzzDecodeForwardRequest(f *testing.F) {
	var buf bytes.Buffer
	protodelim.MarshalTo(&buf, &pb.ForwardRequest{Version: 1, ClusterId: "c", Command: []byte("x")})
	f.Add(buf.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeForwardRequest(bytes.NewReader(data))
		if err == nil && req.GetVersion() != forwardVersion {
			t.Fatalf("accepted version %d", req.GetVersion())
		}
	})
}

func FuzzDecodeForwardResponse(f *testing.F) {
	var buf bytes.Buffer
	protodelim.MarshalTo(&buf, &pb.ForwardResponse{Version: 1, ErrorCode: "x", Index: 3})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodeForwardResponse(bytes.NewReader(data))
	})
}

// FuzzFSMBridge feeds arbitrary log entries and snapshots to the FSM bridge:
// it must never panic, and a refused entry must not change the state.
func FuzzFSMBridge(f *testing.F) {
	f.Add([]byte{entryVersion1, 'o', 'k'}, []byte(snapshotMagic+"\x01"))
	f.Add([]byte{2, 'x'}, []byte("junk"))
	f.Add([]byte{entryVersion1, 'p', 'a', 'n', 'i', 'c'}, []byte{})
	f.Fuzz(func(t *testing.T, entry, snap []byte) {
		sm := &listSM{}
		b := &fsm{sm: sm}
		before := sm.Len()
		res := b.Apply(&raft.Log{Type: raft.LogCommand, Data: entry})
		if r, ok := res.(applyResult); !ok {
			t.Fatalf("Apply returned %T", res)
		} else if r.err != nil && sm.Len() != before {
			t.Fatalf("refused entry changed the state")
		}
		b.Restore(nopCloser{bytes.NewReader(snap)})
	})
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
