package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/diglett/diglett/gateway"
)

// ForGateway is m as a gateway's Cluster (gateway.Config.Cluster): the
// gateway claims each name it publishes through m, and m's errors are
// told as the gateway's (gateway.ErrNameTaken, ErrPortTaken,
// ErrClusterUnavailable).
func (m *Member) ForGateway() gateway.Cluster { return forGateway{m} }

type forGateway struct{ m *Member }

var _ gateway.Cluster = forGateway{}

func (g forGateway) Hold(ctx context.Context, name, identity string, port, portMin, portMax int, rules []byte) (int, error) {
	c, err := g.m.HoldWith(ctx, name, identity, port, portMin, portMax, rules)
	if err != nil {
		return 0, gatewayError(err)
	}
	return c.Port, nil
}

func (g forGateway) Unhold(ctx context.Context, name string) error {
	return gatewayError(g.m.Unhold(ctx, name))
}

func (g forGateway) Release(ctx context.Context, name string) error {
	return gatewayError(g.m.Release(ctx, name))
}

// gatewayError wraps err with the gateway's error of the same meaning.
func gatewayError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNameTaken):
		return fmt.Errorf("%w: %w", gateway.ErrNameTaken, err)
	case errors.Is(err, ErrPortTaken):
		return fmt.Errorf("%w: %w", gateway.ErrPortTaken, err)
	case errors.Is(err, ErrUnavailable):
		return fmt.Errorf("%w: %w", gateway.ErrClusterUnavailable, err)
	}
	return err
}
