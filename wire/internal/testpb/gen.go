// Package testpb holds the protobuf message that package wire's tests send.
package testpb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative test.proto
