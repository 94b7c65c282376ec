"""The command table: one row per command and subcommand of Redis 7.0 to 8.10 (SPEC 6).

Columns: name (``container|sub`` for subcommands, as ``COMMAND`` names them), arity (Redis's:
negative means "at least"), key specs (Redis's ``begin_search``/``find_keys`` in short form, see
``policy.KeySpec.parse``), action, transform (a name in ``transform.HANDLERS``, ``-`` for none),
the Redis version that added the command, and (in ``NOTES``) why a row is what it is.

Rows for 7.0 were taken from a live 7.0 server's ``COMMAND`` output; the test
``tests/integration/test_redis_policy.py`` checks every row against the live server's
``COMMAND INFO``/``COMMAND DOCS`` again. Rows added after 7.0 follow the Redis release notes and
command specs; their key specs cannot be checked here and are conservative (``refuse`` or
``deny`` wherever a value could be touched in a way veil does not model).
"""

from __future__ import annotations

# name               arity keys                       action transform         since
TABLE = """
acl                   -2 -                          pass   -                 7.0
acl|cat               -2 -                          pass   -                 7.0
acl|deluser           -3 -                          pass   -                 7.0
acl|dryrun            -4 -                          pass   -                 7.0
acl|genpass           -2 -                          pass   -                 7.0
acl|getuser            3 -                          pass   -                 7.0
acl|help               2 -                          pass   -                 7.0
acl|list               2 -                          pass   -                 7.0
acl|load               2 -                          pass   -                 7.0
acl|log               -2 -                          pass   -                 7.0
acl|save               2 -                          pass   -                 7.0
acl|setuser           -3 -                          pass   -                 7.0
acl|users              2 -                          pass   -                 7.0
acl|whoami             2 -                          pass   -                 7.0
append                 3 i1                         emul   append            7.0
arcount               -2 i1                         refuse -                 8.8
ardel                 -2 i1                         refuse -                 8.8
ardelrange            -2 i1                         refuse -                 8.8
arget                 -2 i1                         refuse -                 8.8
argetrange            -2 i1                         refuse -                 8.8
argrep                -2 i1                         refuse -                 8.8
arinfo                -2 i1                         refuse -                 8.8
arinsert              -2 i1                         refuse -                 8.8
arlastitems           -2 i1                         refuse -                 8.8
arlen                 -2 i1                         refuse -                 8.8
armget                -2 i1                         refuse -                 8.8
armset                -2 i1                         refuse -                 8.8
arnext                -2 i1                         refuse -                 8.8
arop                  -2 i1                         refuse -                 8.8
arring                -2 i1                         refuse -                 8.8
arscan                -2 i1                         refuse -                 8.8
arseek                -2 i1                         refuse -                 8.8
arset                 -2 i1                         refuse -                 8.8
asking                 1 -                          deny   -                 7.0
auth                  -2 -                          veil   auth              7.0
backup                -2 -                          deny   -                 8.10
bf.add                -2 i1                         refuse -                 8.0
bf.card               -2 i1                         refuse -                 8.0
bf.exists             -2 i1                         refuse -                 8.0
bf.info               -2 i1                         refuse -                 8.0
bf.insert             -2 i1                         refuse -                 8.0
bf.loadchunk          -2 i1                         refuse -                 8.0
bf.madd               -2 i1                         refuse -                 8.0
bf.mexists            -2 i1                         refuse -                 8.0
bf.reserve            -2 i1                         refuse -                 8.0
bf.scandump           -2 i1                         refuse -                 8.0
bgrewriteaof           1 -                          pass   -                 7.0
bgsave                -1 -                          pass   -                 7.0
bitcount              -2 i1                         emul   bitcount          7.0
bitfield              -2 i1                         refuse -                 7.0
bitfield_ro           -2 i1                         emul   bitfield_ro       7.0
bitop                 -4 i2,i3..-1                  refuse -                 7.0
bitpos                -3 i1                         emul   bitpos            7.0
blmove                 6 i1,i2                      rand   lmove             7.0
blmovem               -6 i1,i2                      rand   lmovem            8.10
blmpop                -5 i2#0+1/1                   rand   lmpop             7.0
blpop                 -3 i1..-2                     rand   blpop             7.0
brpop                 -3 i1..-2                     rand   blpop             7.0
brpoplpush             4 i1,i2                      rand   lmove             7.0
bzmpop                -5 i2#0+1/1                   det    zmpop             7.0
bzpopmax              -3 i1..-2                     det    bzpop             7.0
bzpopmin              -3 i1..-2                     det    bzpop             7.0
cf.add                -2 i1                         refuse -                 8.0
cf.addnx              -2 i1                         refuse -                 8.0
cf.count              -2 i1                         refuse -                 8.0
cf.del                -2 i1                         refuse -                 8.0
cf.exists             -2 i1                         refuse -                 8.0
cf.info               -2 i1                         refuse -                 8.0
cf.insert             -2 i1                         refuse -                 8.0
cf.insertnx           -2 i1                         refuse -                 8.0
cf.loadchunk          -2 i1                         refuse -                 8.0
cf.mexists            -2 i1                         refuse -                 8.0
cf.reserve            -2 i1                         refuse -                 8.0
cf.scandump           -2 i1                         refuse -                 8.0
client                -2 -                          pass   -                 7.0
client|caching         3 -                          pass   -                 7.0
client|getname         2 -                          pass   -                 7.0
client|getredir        2 -                          pass   -                 7.0
client|help            2 -                          pass   -                 7.0
client|id              2 -                          pass   -                 7.0
client|info            2 -                          pass   -                 7.0
client|kill           -3 -                          pass   -                 7.0
client|list           -2 -                          pass   -                 7.0
client|no-evict        3 -                          pass   -                 7.0
client|no-touch        3 -                          pass   -                 7.2
client|pause          -3 -                          pass   -                 7.0
client|reply           3 -                          veil   client_reply      7.0
client|setinfo        -4 -                          pass   -                 7.2
client|setname         3 -                          pass   -                 7.0
client|tracking       -3 -                          pass   -                 7.0
client|trackinginfo    2 -                          pass   -                 7.0
client|unblock        -3 -                          pass   -                 7.0
client|unpause         2 -                          pass   -                 7.0
cluster               -2 -                          deny   -                 7.0
cluster|addslots      -3 -                          deny   -                 7.0
cluster|addslotsrange -4 -                          deny   -                 7.0
cluster|bumpepoch      2 -                          deny   -                 7.0
cluster|count-failure-reports  3 -                          deny   -                 7.0
cluster|countkeysinslot  3 -                          deny   -                 7.0
cluster|delslots      -3 -                          deny   -                 7.0
cluster|delslotsrange -4 -                          deny   -                 7.0
cluster|failover      -2 -                          deny   -                 7.0
cluster|flushslots     2 -                          deny   -                 7.0
cluster|forget         3 -                          deny   -                 7.0
cluster|getkeysinslot  4 -                          deny   -                 7.0
cluster|help           2 -                          deny   -                 7.0
cluster|info           2 -                          deny   -                 7.0
cluster|keyslot        3 -                          deny   -                 7.0
cluster|links          2 -                          deny   -                 7.0
cluster|meet          -4 -                          deny   -                 7.0
cluster|migration     -2 -                          deny   -                 8.4
cluster|myid           2 -                          deny   -                 7.0
cluster|myshardid      2 -                          deny   -                 7.2
cluster|nodes          2 -                          deny   -                 7.0
cluster|replicas       3 -                          deny   -                 7.0
cluster|replicate      3 -                          deny   -                 7.0
cluster|reset         -2 -                          deny   -                 7.0
cluster|saveconfig     2 -                          deny   -                 7.0
cluster|set-config-epoch  3 -                          deny   -                 7.0
cluster|setslot       -4 -                          deny   -                 7.0
cluster|shards         2 -                          deny   -                 7.0
cluster|slaves         3 -                          deny   -                 7.0
cluster|slot-stats    -4 -                          deny   -                 8.2
cluster|slots          2 -                          deny   -                 7.0
cms.incrby            -2 i1                         refuse -                 8.0
cms.info              -2 i1                         refuse -                 8.0
cms.initbydim         -2 i1                         refuse -                 8.0
cms.initbyprob        -2 i1                         refuse -                 8.0
cms.merge             -1 -                          deny   -                 8.0
cms.query             -2 i1                         refuse -                 8.0
command               -1 -                          pass   -                 7.0
command|count          2 -                          pass   -                 7.0
command|docs          -2 -                          pass   -                 7.0
command|getkeys       -4 -                          pass   -                 7.0
command|getkeysandflags -4 -                          pass   -                 7.0
command|help           2 -                          pass   -                 7.0
command|info          -2 -                          pass   -                 7.0
command|list          -2 -                          pass   -                 7.0
config                -2 -                          pass   -                 7.0
config|get            -3 -                          pass   -                 7.0
config|help            2 -                          pass   -                 7.0
config|resetstat       2 -                          pass   -                 7.0
config|rewrite         2 -                          pass   -                 7.0
config|set            -4 -                          pass   -                 7.0
copy                  -3 i1,i2                      pass   move              7.0
dbsize                 1 -                          pass   -                 7.0
debug                 -2 -                          deny   -                 7.0
decr                   2 i1                         refuse -                 7.0
decrby                 3 i1                         refuse -                 7.0
del                   -2 i1..-1                     pass   -                 7.0
delex                 -2 i1                         refuse -                 8.4
digest                 2 i1                         refuse -                 8.4
discard                1 -                          veil   discard           7.0
dump                   2 i1                         refuse -                 7.0
echo                   2 -                          pass   -                 7.0
eval                  -3 i2#0+1/1                   veil   eval              7.0
eval_ro               -3 i2#0+1/1                   veil   eval              7.0
evalsha               -3 i2#0+1/1                   veil   evalsha           7.0
evalsha_ro            -3 i2#0+1/1                   veil   evalsha           7.0
exec                   1 -                          veil   exec              7.0
exists                -2 i1..-1                     pass   -                 7.0
expire                -3 i1                         pass   -                 7.0
expireat              -3 i1                         pass   -                 7.0
expiretime             2 i1                         pass   -                 7.0
failover              -1 -                          pass   -                 7.0
fcall                 -3 i2#0+1/1                   deny   -                 7.0
fcall_ro              -3 i2#0+1/1                   deny   -                 7.0
flushall              -1 -                          veil   flush             7.0
flushdb               -1 -                          veil   flush             7.0
ft._list              -1 -                          deny   -                 8.0
ft.aggregate          -1 -                          deny   -                 8.0
ft.aliasadd           -1 -                          deny   -                 8.0
ft.aliasdel           -1 -                          deny   -                 8.0
ft.aliaslist          -1 -                          deny   -                 8.10
ft.aliasupdate        -1 -                          deny   -                 8.0
ft.alter              -1 -                          deny   -                 8.0
ft.config             -1 -                          deny   -                 8.0
ft.create             -1 -                          deny   -                 8.0
ft.cursor             -1 -                          deny   -                 8.0
ft.dictadd            -1 -                          deny   -                 8.0
ft.dictdel            -1 -                          deny   -                 8.0
ft.dictdump           -1 -                          deny   -                 8.0
ft.dropindex          -1 -                          deny   -                 8.0
ft.explain            -1 -                          deny   -                 8.0
ft.explaincli         -1 -                          deny   -                 8.0
ft.hybrid             -1 -                          deny   -                 8.4
ft.info               -1 -                          deny   -                 8.0
ft.profile            -1 -                          deny   -                 8.0
ft.search             -1 -                          deny   -                 8.0
ft.spellcheck         -1 -                          deny   -                 8.0
ft.sugadd             -1 -                          deny   -                 8.0
ft.sugdel             -1 -                          deny   -                 8.0
ft.sugget             -1 -                          deny   -                 8.0
ft.suglen             -1 -                          deny   -                 8.0
ft.syndump            -1 -                          deny   -                 8.0
ft.synupdate          -1 -                          deny   -                 8.0
ft.tagvals            -1 -                          deny   -                 8.0
function              -2 -                          pass   -                 7.0
function|delete        3 -                          pass   -                 7.0
function|dump          2 -                          pass   -                 7.0
function|flush        -2 -                          pass   -                 7.0
function|help          2 -                          pass   -                 7.0
function|kill          2 -                          pass   -                 7.0
function|list         -2 -                          pass   -                 7.0
function|load         -3 -                          deny   -                 7.0
function|restore      -3 -                          deny   -                 7.0
function|stats         2 -                          pass   -                 7.0
geoadd                -5 i1                         det    geoadd            7.0
geodist               -4 i1                         det    geodist           7.0
geohash               -2 i1                         det    members2          7.0
geopos                -2 i1                         det    members2          7.0
georadius             -6 i1,kSTORE@6,kSTOREDIST@6   det    georadius         7.0
georadius_ro          -6 i1                         det    georadius         7.0
georadiusbymember     -5 i1,kSTORE@5,kSTOREDIST@5   det    georadiusbymember 7.0
georadiusbymember_ro  -5 i1                         det    georadiusbymember 7.0
geosearch             -7 i1                         det    geosearch         7.0
geosearchstore        -8 i1,i2                      det    geosearchstore    7.0
get                    2 i1                         rand   get               7.0
getbit                 3 i1                         emul   getbit            7.0
getdel                 2 i1                         rand   getdel            7.0
getex                 -2 i1                         rand   getdel            7.0
getrange               4 i1                         emul   getrange          7.0
getset                 3 i1                         rand   value2            7.0
hdel                  -3 i1                         pass   hfields           7.0
hello                 -1 -                          veil   hello             7.0
hexists                3 i1                         pass   hfields           7.0
hexpire               -6 i1                         pass   hfieldsn          7.4
hexpireat             -6 i1                         pass   hfieldsn          7.4
hexpiretime           -5 i1                         pass   hfieldsn          7.4
hget                   3 i1                         rand   hget              7.0
hgetall                2 i1                         rand   hgetall           7.0
hgetdel               -5 i1                         rand   hgetdel           8.0
hgetex                -5 i1                         rand   hgetdel           8.0
himport               -2 -                          deny   -                 8.10
hincrby                4 i1                         refuse -                 7.0
hincrbyfloat           4 i1                         refuse -                 7.0
hkeys                  2 i1                         pass   hkeys             7.0
hlen                   2 i1                         pass   -                 7.0
hmget                 -3 i1                         rand   hmget             7.0
hmset                 -4 i1                         rand   hset              7.0
hotkeys               -2 -                          pass   -                 8.6
hotkeys|get           -2 -                          pass   -                 8.6
hotkeys|reset         -2 -                          pass   -                 8.6
hotkeys|start         -2 -                          pass   -                 8.6
hotkeys|stop          -2 -                          pass   -                 8.6
hpersist              -5 i1                         pass   hfieldsn          7.4
hpexpire              -6 i1                         pass   hfieldsn          7.4
hpexpireat            -6 i1                         pass   hfieldsn          7.4
hpexpiretime          -5 i1                         pass   hfieldsn          7.4
hpttl                 -5 i1                         pass   hfieldsn          7.4
hrandfield            -2 i1                         rand   hrandfield        7.0
hscan                 -3 i1                         rand   hscan             7.0
hset                  -4 i1                         rand   hset              7.0
hsetex                -6 i1                         rand   hsetex            8.0
hsetnx                 4 i1                         rand   hsetnx            7.0
hstrlen                3 i1                         emul   hstrlen           7.0
httl                  -5 i1                         pass   hfieldsn          7.4
hvals                  2 i1                         rand   hvals             7.0
incr                   2 i1                         refuse -                 7.0
incrby                 3 i1                         refuse -                 7.0
incrbyfloat            3 i1                         refuse -                 7.0
increx                -2 i1                         refuse -                 8.8
info                  -1 -                          pass   -                 7.0
json.arrappend        -2 i1                         refuse -                 8.0
json.arrindex         -2 i1                         refuse -                 8.0
json.arrinsert        -2 i1                         refuse -                 8.0
json.arrlen           -2 i1                         refuse -                 8.0
json.arrpop           -2 i1                         refuse -                 8.0
json.arrtrim          -2 i1                         refuse -                 8.0
json.clear            -2 i1                         refuse -                 8.0
json.debug            -1 -                          deny   -                 8.0
json.del              -2 i1                         refuse -                 8.0
json.forget           -2 i1                         refuse -                 8.0
json.get              -2 i1                         refuse -                 8.0
json.merge            -2 i1                         refuse -                 8.0
json.mget             -1 -                          deny   -                 8.0
json.mset             -1 -                          deny   -                 8.0
json.numincrby        -2 i1                         refuse -                 8.0
json.nummultby        -2 i1                         refuse -                 8.0
json.objkeys          -2 i1                         refuse -                 8.0
json.objlen           -2 i1                         refuse -                 8.0
json.resp             -2 i1                         refuse -                 8.0
json.set              -2 i1                         refuse -                 8.0
json.strappend        -2 i1                         refuse -                 8.0
json.strlen           -2 i1                         refuse -                 8.0
json.toggle           -2 i1                         refuse -                 8.0
json.type             -2 i1                         refuse -                 8.0
keys                   2 -                          veil   scan              7.0
lastsave               1 -                          pass   -                 7.0
latency               -2 -                          pass   -                 7.0
latency|doctor         2 -                          pass   -                 7.0
latency|graph          3 -                          pass   -                 7.0
latency|help           2 -                          pass   -                 7.0
latency|histogram     -2 -                          pass   -                 7.0
latency|history        3 -                          pass   -                 7.0
latency|latest         2 -                          pass   -                 7.0
latency|reset         -2 -                          pass   -                 7.0
lcs                   -3 i1..1                      emul   lcs               7.0
lindex                 3 i1                         rand   lindex            7.0
linsert                5 i1                         det    linsert           7.0
llen                   2 i1                         pass   -                 7.0
lmove                  5 i1,i2                      rand   lmove             7.0
lmovem                -5 i1,i2                      rand   lmovem            8.10
lmpop                 -4 i1#0+1/1                   rand   lmpop             7.0
lolwut                -1 -                          pass   -                 7.0
lpop                  -2 i1                         rand   pop               7.0
lpos                  -3 i1                         det    lpos              7.0
lpush                 -3 i1                         rand   push              7.0
lpushx                -3 i1                         rand   push              7.0
lrange                 4 i1                         rand   lrange            7.0
lrem                   4 i1                         det    lrem              7.0
lset                   4 i1                         rand   lset              7.0
ltrim                  4 i1                         pass   -                 7.0
memory                -2 -                          pass   -                 7.0
memory|doctor          2 -                          pass   -                 7.0
memory|help            2 -                          pass   -                 7.0
memory|malloc-stats    2 -                          pass   -                 7.0
memory|purge           2 -                          pass   -                 7.0
memory|stats           2 -                          pass   -                 7.0
memory|usage          -3 i2                         pass   -                 7.0
mget                  -2 i1..-1                     rand   mget              7.0
migrate               -6 i3,kKEYS@-2..-1            refuse -                 7.0
module                -2 -                          pass   -                 7.0
module|help            2 -                          pass   -                 7.0
module|list            2 -                          pass   -                 7.0
module|load           -3 -                          pass   -                 7.0
module|loadex         -3 -                          pass   -                 7.0
module|unload          3 -                          pass   -                 7.0
monitor                1 -                          deny   -                 7.0
move                   3 i1                         pass   -                 7.0
mset                  -3 i1..-1/2%0                 rand   mset              7.0
msetex                -4 i1#0+1/2                   rand   msetex            8.4
msetnx                -3 i1..-1/2%0                 rand   mset              7.0
multi                  1 -                          veil   multi             7.0
object                -2 -                          pass   -                 7.0
object|encoding        3 i2                         pass   -                 7.0
object|freq            3 i2                         pass   -                 7.0
object|help            2 -                          pass   -                 7.0
object|idletime        3 i2                         pass   -                 7.0
object|refcount        3 i2                         pass   -                 7.0
persist                2 i1                         pass   -                 7.0
pexpire               -3 i1                         pass   -                 7.0
pexpireat             -3 i1                         pass   -                 7.0
pexpiretime            2 i1                         pass   -                 7.0
pfadd                 -2 i1                         det    members2          7.0
pfcount               -2 i1..-1                     det    samens            7.0
pfdebug                3 i2                         deny   -                 7.0
pfmerge               -2 i1,i2..-1                  det    samens            7.0
pfselftest             1 -                          pass   -                 7.0
ping                  -1 -                          pass   -                 7.0
psetex                 4 i1                         rand   value3            7.0
psubscribe            -2 -                          veil   subscribe         7.0
psync                 -3 -                          deny   -                 7.0
pttl                   2 i1                         pass   -                 7.0
publish                3 -                          veil   publish           7.0
pubsub                -2 -                          pass   -                 7.0
pubsub|channels       -2 -                          pass   -                 7.0
pubsub|help            2 -                          pass   -                 7.0
pubsub|numpat          2 -                          pass   -                 7.0
pubsub|numsub         -2 -                          pass   -                 7.0
pubsub|shardchannels  -2 -                          pass   -                 7.0
pubsub|shardnumsub    -2 -                          pass   -                 7.0
punsubscribe          -1 -                          veil   subscribe         7.0
quit                  -1 -                          pass   -                 7.0
randomkey              1 -                          veil   randomkey         7.0
readonly               1 -                          deny   -                 7.0
readwrite              1 -                          deny   -                 7.0
rename                 3 i1,i2                      pass   move              7.0
renamenx               3 i1,i2                      pass   move              7.0
replconf              -1 -                          deny   -                 7.0
replicaof              3 -                          pass   -                 7.0
reset                  1 -                          veil   reset             7.0
restore               -4 i1                         refuse -                 7.0
restore-asking        -4 i1                         refuse -                 7.0
role                   1 -                          pass   -                 7.0
rpop                  -2 i1                         rand   pop               7.0
rpoplpush              3 i1,i2                      rand   lmove             7.0
rpush                 -3 i1                         rand   push              7.0
rpushx                -3 i1                         rand   push              7.0
sadd                  -3 i1                         det    members2          7.0
save                   1 -                          pass   -                 7.0
scan                  -2 -                          veil   scan              7.0
scard                  2 i1                         pass   -                 7.0
script                -2 -                          pass   -                 7.0
script|debug           3 -                          pass   -                 7.0
script|exists         -3 -                          pass   -                 7.0
script|flush          -2 -                          pass   -                 7.0
script|help            2 -                          pass   -                 7.0
script|kill            2 -                          pass   -                 7.0
script|load            3 -                          pass   -                 7.0
sdiff                 -2 i1..-1                     det    setalgebra        7.0
sdiffcard             -3 i1#0+1/1                   det    setcard           8.10
sdiffstore            -3 i1,i2..-1                  det    setstore          7.0
select                 2 -                          veil   select            7.0
set                   -3 i1                         rand   set               7.0
setbit                 4 i1                         refuse -                 7.0
setex                  4 i1                         rand   value3            7.0
setnx                  3 i1                         rand   value2            7.0
setrange               4 i1                         emul   setrange          7.0
shutdown              -1 -                          pass   -                 7.0
sinter                -2 i1..-1                     det    setalgebra        7.0
sintercard            -3 i1#0+1/1                   det    setcard           7.0
sinterstore           -3 i1,i2..-1                  det    setstore          7.0
sismember              3 i1                         det    member2           7.0
slaveof                3 -                          pass   -                 7.0
slowlog               -2 -                          pass   -                 7.0
slowlog|get           -2 -                          veil   slowlog           7.0
slowlog|help           2 -                          pass   -                 7.0
slowlog|len            2 -                          pass   -                 7.0
slowlog|reset          2 -                          pass   -                 7.0
smembers               2 i1                         det    smembers          7.0
smismember            -3 i1                         det    members2          7.0
smove                  4 i1,i2                      det    smove             7.0
sort                  -2 i1,??,??                   veil   sort              7.0
sort_ro               -2 i1,??                      veil   sort              7.0
spop                  -2 i1                         det    spop              7.0
spublish               3 i1                         veil   publish           7.0
srandmember           -2 i1                         det    spop              7.0
srem                  -3 i1                         det    members2          7.0
sscan                 -3 i1                         det    sscan             7.0
ssubscribe            -2 i1..-1                     veil   subscribe         7.0
strlen                 2 i1                         emul   strlen            7.0
subscribe             -2 -                          veil   subscribe         7.0
substr                 4 i1                         emul   getrange          7.0
sunion                -2 i1..-1                     det    setalgebra        7.0
sunioncard            -3 i1#0+1/1                   det    setcard           8.10
sunionstore           -3 i1,i2..-1                  det    setstore          7.0
sunsubscribe          -1 i1..-1                     veil   subscribe         7.0
swapdb                 3 -                          veil   swapdb            7.0
sync                   1 -                          deny   -                 7.0
tdigest.add           -2 i1                         refuse -                 8.0
tdigest.byrank        -2 i1                         refuse -                 8.0
tdigest.byrevrank     -2 i1                         refuse -                 8.0
tdigest.cdf           -2 i1                         refuse -                 8.0
tdigest.create        -2 i1                         refuse -                 8.0
tdigest.info          -2 i1                         refuse -                 8.0
tdigest.max           -2 i1                         refuse -                 8.0
tdigest.merge         -1 -                          deny   -                 8.0
tdigest.min           -2 i1                         refuse -                 8.0
tdigest.quantile      -2 i1                         refuse -                 8.0
tdigest.rank          -2 i1                         refuse -                 8.0
tdigest.reset         -2 i1                         refuse -                 8.0
tdigest.revrank       -2 i1                         refuse -                 8.0
tdigest.trimmed_mean  -2 i1                         refuse -                 8.0
time                   1 -                          pass   -                 7.0
topk.add              -2 i1                         refuse -                 8.0
topk.count            -2 i1                         refuse -                 8.0
topk.incrby           -2 i1                         refuse -                 8.0
topk.info             -2 i1                         refuse -                 8.0
topk.list             -2 i1                         refuse -                 8.0
topk.query            -2 i1                         refuse -                 8.0
topk.reserve          -2 i1                         refuse -                 8.0
touch                 -2 i1..-1                     pass   -                 7.0
ts.add                -2 i1                         refuse -                 8.0
ts.alter              -2 i1                         refuse -                 8.0
ts.create             -2 i1                         refuse -                 8.0
ts.createrule         -1 -                          deny   -                 8.0
ts.decrby             -2 i1                         refuse -                 8.0
ts.del                -2 i1                         refuse -                 8.0
ts.deleterule         -1 -                          deny   -                 8.0
ts.get                -2 i1                         refuse -                 8.0
ts.incrby             -2 i1                         refuse -                 8.0
ts.info               -2 i1                         refuse -                 8.0
ts.madd               -1 -                          deny   -                 8.0
ts.mget               -1 -                          deny   -                 8.0
ts.mrange             -1 -                          deny   -                 8.0
ts.mrevrange          -1 -                          deny   -                 8.0
ts.nrange             -1 -                          deny   -                 8.10
ts.nrevrange          -1 -                          deny   -                 8.10
ts.queryindex         -1 -                          deny   -                 8.0
ts.querylabels        -1 -                          deny   -                 8.10
ts.range              -2 i1                         refuse -                 8.0
ts.read               -1 -                          deny   -                 8.10
ts.revrange           -2 i1                         refuse -                 8.0
ttl                    2 i1                         pass   -                 7.0
type                   2 i1                         pass   -                 7.0
unlink                -2 i1..-1                     pass   -                 7.0
unsubscribe           -1 -                          veil   subscribe         7.0
unwatch                1 -                          pass   -                 7.0
vadd                  -2 i1                         refuse -                 8.0
vcard                 -2 i1                         refuse -                 8.0
vdim                  -2 i1                         refuse -                 8.0
vemb                  -2 i1                         refuse -                 8.0
vgetattr              -2 i1                         refuse -                 8.0
vinfo                 -2 i1                         refuse -                 8.0
vismember             -2 i1                         refuse -                 8.2
vlinks                -2 i1                         refuse -                 8.0
vrandmember           -2 i1                         refuse -                 8.0
vrem                  -2 i1                         refuse -                 8.0
vsetattr              -2 i1                         refuse -                 8.0
vsim                  -2 i1                         refuse -                 8.0
wait                   3 -                          pass   -                 7.0
waitaof                4 -                          pass   -                 7.2
watch                 -2 i1..-1                     pass   -                 7.0
xack                  -4 i1                         pass   -                 7.0
xackdel               -5 i1                         pass   -                 8.2
xadd                  -5 i1                         rand   xadd              7.0
xautoclaim            -6 i1                         rand   xautoclaim        7.0
xcfgset               -3 i1                         pass   -                 8.6
xclaim                -6 i1                         rand   xclaim            7.0
xdel                  -3 i1                         pass   -                 7.0
xdelex                -5 i1                         pass   -                 8.2
xgroup                -2 -                          pass   -                 7.0
xgroup|create         -5 i2                         pass   -                 7.0
xgroup|createconsumer  5 i2                         pass   -                 7.0
xgroup|delconsumer     5 i2                         pass   -                 7.0
xgroup|destroy         4 i2                         pass   -                 7.0
xgroup|help            2 -                          pass   -                 7.0
xgroup|setid          -5 i2                         pass   -                 7.0
xinfo                 -2 -                          pass   -                 7.0
xinfo|consumers        4 i2                         pass   -                 7.0
xinfo|groups           3 i2                         pass   -                 7.0
xinfo|help             2 -                          pass   -                 7.0
xinfo|stream          -3 i2                         rand   xinfo_stream      7.0
xlen                   2 i1                         pass   -                 7.0
xnack                 -4 i1                         pass   -                 8.8
xpending              -3 i1                         pass   -                 7.0
xrange                -4 i1                         rand   xrange            7.0
xread                 -4 kSTREAMS@1..-1/1%2         rand   xread             7.0
xreadgroup            -7 kSTREAMS@4..-1/1%2         rand   xread             7.0
xrevrange             -4 i1                         rand   xrange            7.0
xsetid                -3 i1                         pass   -                 7.0
xtrim                 -4 i1                         pass   -                 7.0
zadd                  -4 i1                         det    zadd              7.0
zcard                  2 i1                         pass   -                 7.0
zcount                 4 i1                         pass   -                 7.0
zdiff                 -3 i1#0+1/1                   det    zalgebra          7.0
zdiffstore            -4 i1,i2#0+1/1                det    zstore            7.0
zincrby                4 i1                         det    zincrby           7.0
zinter                -3 i1#0+1/1                   det    zalgebra          7.0
zintercard            -3 i1#0+1/1                   det    setcard           7.0
zinterstore           -4 i1,i2#0+1/1                det    zstore            7.0
zlexcount              4 i1                         refuse -                 7.0
zmpop                 -4 i1#0+1/1                   det    zmpop             7.0
zmscore               -3 i1                         det    members2          7.0
zpopmax               -2 i1                         det    zpop              7.0
zpopmin               -2 i1                         det    zpop              7.0
zrandmember           -2 i1                         det    zrandmember       7.0
zrange                -4 i1                         det    zrange            7.0
zrangebylex           -4 i1                         refuse -                 7.0
zrangebyscore         -4 i1                         det    zrangeby          7.0
zrangestore           -5 i1,i2                      det    zrangestore       7.0
zrank                  3 i1                         det    zmember           7.0
zrem                  -3 i1                         det    members2          7.0
zremrangebylex         4 i1                         refuse -                 7.0
zremrangebyrank        4 i1                         pass   -                 7.0
zremrangebyscore       4 i1                         pass   -                 7.0
zrevrange             -4 i1                         det    zrangeby          7.0
zrevrangebylex        -4 i1                         refuse -                 7.0
zrevrangebyscore      -4 i1                         det    zrangeby          7.0
zrevrank               3 i1                         det    zmember           7.0
zscan                 -3 i1                         det    zscan             7.0
zscore                 3 i1                         det    zmember           7.0
zunion                -3 i1#0+1/1                   det    zalgebra          7.0
zunionstore           -4 i1,i2#0+1/1                det    zstore            7.0
"""

# why a row is what it is (rendered by VEIL COMMAND and docs/REDIS.md)
NOTES: tuple[tuple[str, str], ...] = (
    ("append setrange", "read-modify-write on a side connection (WATCH/MULTI)"),
    (
        "arcount ardel ardelrange arget argetrange argrep arinfo arinsert arlastitems arlen "
        "armget armset arnext arop arring arscan arseek arset",
        "arrays: not supported on encrypted keys yet",
    ),
    ("asking readonly readwrite", "cluster-only commands; veil fronts one Redis"),
    ("auth", "passed through; veil remembers the user for ACL DRYRUN"),
    ("backup", "node-side backups: run them directly against Redis"),
    (
        "bf.add bf.card bf.exists bf.info bf.insert bf.loadchunk bf.madd bf.mexists bf.reserve "
        "bf.scandump cf.add cf.addnx cf.count cf.del cf.exists cf.info cf.insert cf.insertnx "
        "cf.loadchunk cf.mexists cf.reserve cf.scandump cms.incrby cms.info cms.initbydim "
        "cms.initbyprob cms.query json.arrappend json.arrindex json.arrinsert json.arrlen "
        "json.arrpop json.arrtrim json.clear json.del json.forget json.get json.merge "
        "json.numincrby json.nummultby json.objkeys json.objlen json.resp json.set json.strappend "
        "json.strlen json.toggle json.type tdigest.add tdigest.byrank tdigest.byrevrank "
        "tdigest.cdf tdigest.create tdigest.info tdigest.max tdigest.min tdigest.quantile "
        "tdigest.rank tdigest.reset tdigest.revrank tdigest.trimmed_mean topk.add topk.count "
        "topk.incrby topk.info topk.list topk.query topk.reserve ts.add ts.alter ts.create "
        "ts.decrby ts.del ts.get ts.incrby ts.info ts.range ts.revrange",
        "module data types compute on their contents",
    ),
    ("bitcount", "GET, then counted over the plaintext"),
    ("bitfield bitop setbit", "bit operations on ciphertext"),
    ("bitfield_ro", "GET, then read from the plaintext"),
    ("bitpos", "GET, then searched in the plaintext"),
    ("blmove blmovem brpoplpush lmove lmovem rpoplpush", "moves refused across policies"),
    ("client|reply", "emulated: replies never pair with the wrong command"),
    (
        "cluster cluster|addslots cluster|addslotsrange cluster|bumpepoch "
        "cluster|count-failure-reports cluster|countkeysinslot cluster|delslots "
        "cluster|delslotsrange cluster|failover "
        "cluster|flushslots cluster|forget cluster|getkeysinslot cluster|help cluster|info "
        "cluster|keyslot cluster|links cluster|meet cluster|migration cluster|myid "
        "cluster|myshardid cluster|nodes cluster|replicas cluster|replicate cluster|reset "
        "cluster|saveconfig cluster|set-config-epoch cluster|setslot cluster|shards "
        "cluster|slaves cluster|slot-stats cluster|slots",
        "cluster topology would send clients around veil",
    ),
    (
        "cms.merge ft._list ft.aggregate ft.aliasadd ft.aliasdel ft.aliaslist ft.aliasupdate "
        "ft.alter ft.config ft.create ft.cursor ft.dictadd ft.dictdel ft.dictdump ft.dropindex "
        "ft.explain ft.explaincli ft.hybrid ft.info ft.profile ft.search ft.spellcheck ft.sugadd "
        "ft.sugdel ft.sugget ft.suglen ft.syndump ft.synupdate ft.tagvals json.debug json.mget "
        "json.mset tdigest.merge ts.createrule ts.deleterule ts.madd ts.mget ts.mrange "
        "ts.mrevrange ts.nrange ts.nrevrange ts.queryindex ts.querylabels ts.read",
        "multi-key or index commands over values veil cannot check",
    ),
    (
        "copy rename renamenx",
        "refused between an encrypted and a plaintext key or across namespaces",
    ),
    ("debug", "debugging commands expose internals and stored bytes"),
    (
        "decr decrby hincrby hincrbyfloat incr incrby incrbyfloat increx",
        "counters belong under plaintext patterns",
    ),
    ("delex", "conditions compare stored values"),
    ("digest", "would digest the ciphertext"),
    ("dump", "the serialized value would hand stored envelopes to the client"),
    ("eval eval_ro evalsha evalsha_ro", "only redis.allowed_scripts, and only on plaintext keys"),
    ("exec", "aborts (EXECABORT) when veil refused a queued command"),
    (
        "fcall fcall_ro function|load function|restore",
        "functions cannot be checked against redis.allowed_scripts",
    ),
    ("flushall flushdb", "refused unless redis.allow_flush"),
    ("geoadd", "members deterministic, coordinates plaintext"),
    ("getbit", "GET, then the plaintext bit"),
    ("getrange substr", "GET, then the plaintext slice"),
    (
        "hdel hexists hexpire hexpireat hexpiretime hpersist hpexpire hpexpireat hpexpiretime "
        "hpttl httl",
        "field names encrypted under redis.deterministic_fields",
    ),
    ("hello", "passed through; veil follows the protocol version"),
    ("himport", "compact-hash import sessions: not supported yet"),
    ("hkeys", "field names are plaintext unless redis.deterministic_fields"),
    ("hscan", "MATCH on deterministic field names refused"),
    ("hstrlen", "HGET, then the plaintext length"),
    ("hvals", "sent as HGETALL: a value's field name is part of its context"),
    ("keys scan", "veil's reserved keys are hidden"),
    ("lcs", "MGET, then LCS over the plaintexts"),
    ("linsert", "the pivot needs redis.deterministic_lists"),
    ("lpos lrem", "needs redis.deterministic_lists"),
    ("lpush lpushx rpush rpushx", "deterministic under redis.deterministic_lists"),
    ("migrate", "moves stored envelopes to a server veil does not front"),
    ("monitor", "would stream stored envelopes and bypass the policy"),
    ("multi", "transactions: replies inside EXEC are decrypted"),
    ("pfadd", "elements deterministic"),
    (
        "pfcount pfmerge sdiff sdiffcard sdiffstore sinter sintercard sinterstore sunion "
        "sunioncard sunionstore zdiff zdiffstore zinter zintercard zinterstore zunion zunionstore",
        "every key in one namespace",
    ),
    ("pfdebug", "debugging command"),
    (
        "psubscribe punsubscribe ssubscribe subscribe sunsubscribe unsubscribe",
        "messages on redis.encrypt_channels are decrypted",
    ),
    ("psync replconf sync", "replication streams carry stored envelopes"),
    ("publish spublish", "encrypted on redis.encrypt_channels"),
    ("randomkey", "a reserved key is never returned"),
    ("reset", "passed through; veil resets what it tracks"),
    ("restore restore-asking", "would store bytes veil never sealed"),
    ("select", "passed through; veil follows the database"),
    ("set", "all options; IFEQ-style conditions refused"),
    ("slowlog|get", "envelopes in logged arguments are masked"),
    ("smove", "refused across policies"),
    ("sort sort_ro", "sorts by value; BY/GET patterns read other keys"),
    ("sscan zscan", "MATCH refused (members are encrypted)"),
    ("strlen", "GET, then the plaintext length"),
    ("swapdb", "refused when it would move the keyring's database"),
    (
        "vadd vcard vdim vemb vgetattr vinfo vismember vlinks vrandmember vrem vsetattr vsim",
        "vector sets compute on their elements",
    ),
    ("xadd", "field values encrypted, bound to their field name"),
    ("zadd", "scores stay plaintext"),
    (
        "zlexcount zrangebylex zremrangebylex zrevrangebylex",
        "lexicographic order of ciphertext is meaningless",
    ),
    ("zrange", "BYLEX refused"),
    ("zrangestore", "BYLEX refused; refused across policies"),
)
