// Package pb holds the generated protobuf code for the node's own wire
// messages: invite tokens, the join protocol, the opened-generation result
// and gossip announcements. Do not edit node.pb.go by hand: change node.proto
// and run `go generate ./node/pb` (needs protoc 3.21+ and protoc-gen-go).
package pb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative node.proto
