package DwopsLabLoopback;
# Loaded into the real Perl gearmand (/usr/bin/gearmand, Gearman::Server 1.130) by the lab:
#   perl -I lab/perl -MDwopsLabLoopback /usr/bin/gearmand --listen ADDR --port 7003
# Gearman::Server->new() calls create_listening_sock() with no port, which opens a second
# listener on every interface at a random port. The lab allows no listener outside 127.0.0.0/8,
# so that call is skipped and any other non-loopback listener is refused.
use strict;
use warnings;
use Gearman::Server;

{
    no warnings 'redefine';
    my $orig = \&Gearman::Server::create_listening_sock;
    *Gearman::Server::create_listening_sock = sub {
        my ($self, $port, %opts) = @_;
        return undef unless defined $port;
        my $addr = $opts{local_addr} // '';
        die "dwops lab: refusing to listen on '$addr' (loopback 127.0.0.0/8 only)\n"
            unless $addr =~ /^127\./;
        return $orig->(@_);
    };
}

1;
