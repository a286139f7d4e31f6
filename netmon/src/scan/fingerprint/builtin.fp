; netmon's own fallback SYN-ACK signatures, in p0f 3's `[tcp:response]` format, used
; beside (never instead of) a p0f.fp file given or found at run time. Written for
; netmon from what these systems' stacks send by default; few and coarse on purpose.
;
; ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass

[tcp:response]

; Linux 4.x to 6.x: window 65160 (45 segments of 1448) or 64240 (44 of 1460) with
; scale 7, options in the order of its SYNs; DF, IP ID 0.
label = s:unix:Linux:4.x-6.x
sig   = *:64:0:*:65160,7:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:64240,7:mss,nop,nop,sok,nop,ws:df:0
sig   = *:64:0:*:64240,7:mss,nop,ws:df:0
sig   = *:64:0:*:65160,7:mss,nop,nop,ts,nop,ws:df:0
sig   = *:64:0:*:65483,7:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:%8,7:mss,sok,ts,nop,ws:df:0

; Any Linux of the last decade, whatever its buffer sizes.
label = g:unix:Linux:
sig   = *:64:0:*:*,*:mss,sok,ts,nop,ws:df:0
sig   = *:64:0:*:*,*:mss,nop,nop,sok,nop,ws:df:0

; FreeBSD 11 and later: window 65535, scale 6, DF, incrementing IP ID.
label = s:unix:FreeBSD:11.x-14.x
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,ts:df,id+:0
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,eol+1:df,id+:0

; macOS: window 65535, scale 5 or 6, timestamps before SACK, EOL padding.
label = s:unix:Mac OS X:10.x-14.x
sig   = *:64:0:*:65535,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+:0

; OpenBSD: window 16384, options with NOP pairs.
label = s:unix:OpenBSD:6.x-7.x
sig   = *:64:0:*:16384,*:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0

; Windows 10, 11 and Server 2016 and later: TTL 128, scale 8, no timestamps unless
; asked for by policy.
label = s:win:Windows:10-11
sig   = *:128:0:*:65535,8:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:64240,8:mss,nop,ws,nop,nop,sok:df,id+:0
sig   = *:128:0:*:*,8:mss,nop,ws,sok,ts:df,id+:0
