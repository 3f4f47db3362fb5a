// Package pb holds the protobuf messages of package shares: the sealed
// envelope (stored and sent) and the share protocol's request and response.
// The generated code is committed; regenerate it with `go generate` with
// protoc 3.21 and protoc-gen-go v1.36 on PATH.
package pb

//go:generate protoc --go_out=. --go_opt=paths=source_relative shares.proto
