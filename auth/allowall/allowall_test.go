package allowall

import (
	"context"
	"testing"

	"github.com/diglett/diglett/gateway"
)

func TestAllowAll(t *testing.T) {
	id, err := Authenticator{}.Authenticate(context.Background(), gateway.Credentials{})
	if err != nil || id.Name != Anonymous.Name {
		t.Fatalf("Authenticate = %v, %v", id, err)
	}
	if err := (Authenticator{}).Authorize(context.Background(), id, "x"); err != nil {
		t.Fatal(err)
	}
}
