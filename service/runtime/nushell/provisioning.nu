# The project's extension loader: finds extensions on disk, checks them and copies them into the cache.
#
#   nu -n provisioning.nu module discover [type] [--name N] [--output json|table]
#   nu -n provisioning.nu module load <type> <name> [--version V] [--output json|table]
#   nu -n provisioning.nu module serve-one [--ahead]  (then one request on standard input, see below)
#
# Configuration comes only from the environment (the service runs this with a clean one):
#   PROVISIONING_EXTENSION_PATHS  extension roots separated by ":", searched in order (./examples/extensions)
#   PROVISIONING_EXTENSION_CACHE  cache folder (./data/extensions)
#
# stdout carries exactly one JSON document (json output): the result, or {"error": {code, message, details}}.
# Exit codes: 0 success, 3 an error reported as JSON on stdout; anything else (1: Nushell itself failed, e.g. a
# bad argument) leaves its message on stderr. Warnings (discovery skipping a broken extension) go to stderr.
#
# A load runs once per process, so what it does for the first time is what it costs. On the path of a load, lists
# are filtered with `for` loops rather than closures (`where {|x| ...}`, `each`): a closure costs Nushell about a
# third of a millisecond a call in a script of this size, a loop's turn a few microseconds.

const TYPE_FOLDERS = {provider: "providers", taskserv: "taskservs", cluster: "clusters"}
const METADATA_KEYS = [name version description type dependencies author repository]
const NAME_RE = '^[a-z0-9][a-z0-9._-]{0,63}$'
const SEMVER_RE = '^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?$'
const DEPENDENCY_RE = '^([a-z]+:)?[a-z0-9][a-z0-9._-]*(@.+)?$'
const CONTROL_RE = '[\x00-\x1f\x7f]'
const LEFTOVER_RE = '^\..+\.(tmp|old)-[A-Za-z0-9-]+$'
# A killed load (time limit) leaves its ".<version>.tmp-*" folder behind; later loads remove such leftovers once
# they are this old, which no live copy of a small extension ever is.
const STALE_AFTER = 10min

# Print help.
def main [] {
    print "Usage:
  nu -n provisioning.nu module discover [type] [--name NAME] [--output json|table]
  nu -n provisioning.nu module load <type> <name> [--version VERSION] [--output json|table]
  nu -n provisioning.nu module serve-one [--ahead]   (reads {\"type\", \"name\", \"version\"} as JSON on stdin)

  type: provider | taskserv | cluster (plural and any letter case accepted)
  VERSION: an exact version, or latest (the default): the highest stable version; a pre-release loads
  only by its exact version

Environment:
  PROVISIONING_EXTENSION_PATHS  extension roots, ':'-separated, first match wins (default ./examples/extensions)
  PROVISIONING_EXTENSION_CACHE  cache folder (default ./data/extensions)

Exit codes: 0 success; 3 error, printed as {\"error\": {\"code\", \"message\", \"details\"}} on stdout."
}

# Print help.
def "main module" [] { main }

# List the extensions of one type (all types when none is given), newest version first.
def "main module discover" [
    type?: string           # provider, taskserv or cluster; every type when absent
    --name: string          # only the extension with this name
    --output: string = "json"  # json or table
] {
    set-output $output
    let types = if $type == null { $TYPE_FOLDERS | columns } else { [(normalize-type $type)] }
    if $name != null { check-name $name }
    let found = $types | each {|t| discover-type $t $name } | flatten
    if (output-mode) == "table" {
        $found | each {|e| {
            type: $e.extension_type, name: $e.name, versions: ($e.versions | str join ", ")
            latest: (if $e.latest == null { "none: pre-releases only" } else { $e.latest.version })
        }} | table
    } else {
        emit ($found | to json --raw)
    }
}

# Check one extension version and copy it into the cache; print its metadata, cache path and digest.
def "main module load" [
    type: string            # provider, taskserv or cluster
    name: string            # the extension's name
    --version: string       # an exact version, or latest (the highest stable one, also when absent)
    --output: string = "json"  # json or table
] {
    set-output $output
    load-one $type $name $version
}

# Wait for one load request on standard input, then do what `module load` does, with JSON output. The request
# is one JSON object, read until standard input is closed:
#   {"type": "taskserv", "name": "kubernetes", "version": "1.28.0"}   (version: absent or null for latest)
# and optionally "root": one extension root to search instead of PROVISIONING_EXTENSION_PATHS (the service
# gives the folder a registry archive was unpacked into).
# The service starts this ahead of time, so a request finds Nushell started and this module parsed; each process
# serves one request and exits, as `module load` does.
def "main module serve-one" [
    --ahead                 # started ahead of its request: meanwhile, do the first uses of what every load needs
] {
    if $ahead { warm-up }
    # Not `$in` (nu --stdin): Nushell reads that before the command's first line, so nothing could come first.
    let text = try { open --raw /dev/stdin | decode utf-8 } catch { null }
    set-output json
    let parsed = try { $text | from json } catch { null }
    let request = if (type-name $parsed) == "record" { $parsed } else { {} }
    let type = $request.type? | default null
    let name = $request.name? | default null
    let version = $request.version? | default null
    let root = $request.root? | default null
    if (type-name $type) != "string" or (type-name $name) != "string" or (
        $version != null and (type-name $version) != "string"
    ) or ($root != null and ((type-name $root) != "string" or not ($root | str starts-with "/"))) {
        let reason = "one JSON object {type, name, version, root?} on standard input (root: an absolute path)"
        fail invalid_request $"serve-one expects ($reason)" {field: request, reason: $reason}
    }
    if $root != null { $env.PROVISIONING_EXTENSION_PATHS = $root }
    load-one $type $name $version
}

# What a load does for the first time in a process costs more than the next time: Nushell compiles a regular
# expression when it is first used (half a millisecond for SEMVER_RE), sets up its first listing of a folder, ...
# Done on things that are always there, with no effect, while the process waits for its request (2-3 ms less
# after the hand-over, as much more for a process that has no time to wait: that one does not warm up).
def warm-up [] {
    for re in [$NAME_RE $SEMVER_RE $DEPENDENCY_RE $CONTROL_RE $LEFTOVER_RE] { "x" =~ $re | ignore }
    for e in (ls --all $env.PWD) { $e.name | path basename | str starts-with "." | ignore }
    roots | ignore
    cache-dir | path expand | path type | ignore
    "name = \"x\"" | from toml | to json --raw | from json | ignore
}

# What `module load` does once the output mode is set: check one extension version, copy it into the cache and
# return its metadata, cache path and digest.
def load-one [type: string, name: string, version: any] {
    let type = normalize-type $type
    check-name $name
    if $version != null and $version != "latest" and not ($version =~ $SEMVER_RE) {
        fail invalid_request $"'($version)' is not a semantic version" {
            field: version, reason: "not a semantic version"
        }
    }
    let exact = if $version == null or $version == "latest" { null } else { $version }
    let ext = find-extension $type $name $exact
    if $ext == null {
        fail not_found $"no ($type) named '($name)'" {
            extension_type: $type, name: $name, suggestions: (suggest $type $name)
        }
    }

    let chosen = choose-version $ext $type $name $version
    let folder = $chosen.folder
    let checked = check-extension $folder $type $name $chosen.folder_version
    if ($checked.problems | is-not-empty) { invalid $type $name $folder $checked.problems }
    let meta = $checked.metadata
    let copied = install-copy $folder $type $name $meta.version
    let result = {metadata: $meta, path: $copied.path, digest: $copied.digest, source: $folder}
    if (output-mode) == "table" { $result | table --expand } else { emit ($result | to json --raw) }
}

# --- output and errors ---------------------------------------------------------------------------------------

def --env set-output [mode: string] {
    if $mode not-in [json table] {
        emit ({error: {code: invalid_request, message: $"--output must be json or table, not '($mode)'",
            details: {field: output, reason: "must be json or table"}}} | to json --raw) 3
    }
    $env.PROVISIONING_OUTPUT_MODE = $mode
}

def output-mode [] { $env.PROVISIONING_OUTPUT_MODE? | default json }

# Report an error and stop: one JSON object on stdout (json output) or a message on stderr (table), exit 3.
def fail [code: string, message: string, details: record] {
    if (output-mode) == "table" {
        print --stderr $"error[($code)]: ($message)"
        if ($details | is-not-empty) { print --stderr ($details | table --expand) }
    } else {
        emit ({error: {code: $code, message: $message, details: $details}} | to json --raw) 3
    }
    exit 3
}

# Print the one JSON document on stdout and end with `status`. Without a terminal, Nushell asks `tput` for the
# terminal's size (two processes started, each time) before it prints a command's value or a `print`'s text;
# `print --raw` and an explicit exit ask nothing.
def emit [json: string, status: int = 0] {
    print --raw $json
    exit $status
}

# "file", "dir", "symlink" (never followed), another kind, or "" when nothing is there.
def kind [path: string] { $path | path type | default "" }

def invalid [type: string, name: string, folder: string, problems: list<string>] {
    fail invalid_extension $"($type) ($name) at ($folder) is invalid: ($problems | str join '; ')" {
        path: $folder, problems: $problems
    }
}

def warn [message: string] { print --stderr $"warning: ($message)" }

# --- arguments and configuration -----------------------------------------------------------------------------

# "Taskservs", "TASKSERV", "taskserv" -> "taskserv"
def normalize-type [type: string] {
    let lower = $type | str lowercase
    let singular = if ($lower | str ends-with "s") { $lower | str substring 0..-2 } else { $lower }
    if $singular not-in ($TYPE_FOLDERS | columns) {
        fail invalid_request $"unknown extension type '($type)': use provider, taskserv or cluster" {
            field: extension_type, reason: "must be provider, taskserv or cluster"
        }
    }
    $singular
}

def check-name [name: string] {
    if not ($name =~ $NAME_RE) {
        fail invalid_request $"invalid extension name '($name)'" {
            field: name, reason: "1-64 characters of a-z 0-9 - _ ., starting with a letter or digit"
        }
    }
}

def env-or [name: string, fallback: string] {
    let value = $env | get --optional $name | default ""
    if ($value | str trim) == "" { $fallback } else { $value }
}

def roots [] {
    env-or PROVISIONING_EXTENSION_PATHS "./examples/extensions" | split row ":" | compact --empty | path expand
}

def cache-dir [] { env-or PROVISIONING_EXTENSION_CACHE "./data/extensions" }

# --- finding extensions ----------------------------------------------------------------------------------------

# Folder names under <root>/<types>/ that look like extension names, in every root.
def names-in [root: string, type: string] {
    let dir = $root | path join ($TYPE_FOLDERS | get $type)
    if (kind $dir) != "dir" { return [] }
    ls --all $dir | where type in [dir symlink] | get name | path basename | where {|n| $n =~ $NAME_RE }
}

# What a name folder holds: {dir, layout: "single"} when it has its own metadata.toml (one-version layout),
# {dir, layout: "versioned", versions} when it has version folders (newest first), null when it is no extension.
# `wanted`: an exact version, or null. When that version's folder is there, `versions` holds only it: a load of
# it needs neither a listing nor an order of the others.
def extension-at [dir: string, wanted: any = null] {
    let kind = kind $dir
    if $kind == "symlink" { return {dir: $dir, layout: "symlink"} }
    if $kind != "dir" { return null }
    if (kind ($dir | path join metadata.toml)) != "" { return {dir: $dir, layout: "single"} }
    if $wanted != null and (kind ($dir | path join $wanted)) in [dir symlink] {
        return {dir: $dir, layout: "versioned", versions: [$wanted]}
    }
    let versions = ls --all $dir | where type in [dir symlink] | get name | path basename
        | where {|v| $v =~ $SEMVER_RE }
    if ($versions | is-empty) { return null }
    {dir: $dir, layout: "versioned", versions: (sort-newest $versions)}
}

# The first root that has this type and name wins. `wanted`: as in extension-at.
def find-extension [type: string, name: string, wanted: any] {
    for root in (roots) {
        let found = extension-at ($root | path join ($TYPE_FOLDERS | get $type) $name) $wanted
        if $found != null { return $found }
    }
    null
}

def suggest [type: string, name: string] {
    roots | each {|r| names-in $r $type } | flatten | uniq
    | each {|n| {name: $n, distance: ($n | str distance $name)} }
    | where {|c| $c.distance <= 2 or ($c.name | str contains $name) or ($name | str contains $c.name) }
    | sort-by distance name | first 5 | get name
}

# {version, folder, folder_version (null in the one-version layout)} of the version to load, or fail.
# No version, or "latest", means the highest stable version: a pre-release only when asked for by its version.
def choose-version [ext: record, type: string, name: string, requested: any] {
    let latest = $requested == null or $requested == "latest"
    match $ext.layout {
        "symlink" => { invalid $type $name $ext.dir ["symlink not allowed: ."] }
        "single" => {
            # The version lives in metadata.toml: a broken file is reported as such, whatever was requested.
            let read = read-metadata $ext.dir $type $name null
            if ($read.problems | is-not-empty) { invalid $type $name $ext.dir $read.problems }
            let version = $read.metadata.version
            if ($latest and (is-prerelease $version)) or (not $latest and $requested != $version) {
                no-version $type $name $requested [$version]
            }
            {version: $version, folder: $ext.dir, folder_version: null}
        }
        _ => {
            let version = if $latest { pick-latest $ext.versions } else { $requested }
            if $version == null or $version not-in $ext.versions { no-version $type $name $requested $ext.versions }
            {version: $version, folder: ($ext.dir | path join $version), folder_version: $version}
        }
    }
}

# `requested`: null or "latest" (reported as "latest", as the service does), or an exact version.
def no-version [type: string, name: string, requested: any, available: list<string>] {
    let requested = $requested | default "latest"
    let message = if $requested == "latest" {
        let listed = $available | str join ', '
        $"($type) ($name) has no stable version; its pre-releases load only by their version: ($listed)"
    } else { $"($type) ($name) has no version ($requested)" }
    fail version_not_found $message {extension_type: $type, name: $name, requested: $requested, available: $available}
}

# --- versions ------------------------------------------------------------------------------------------------

def semver-parts [v: string] {
    let p = $v | parse --regex '^(?<major>[0-9]+)\.(?<minor>[0-9]+)\.(?<patch>[0-9]+)(?:-(?<pre>[^+]*))?' | first
    {major: ($p.major | into int), minor: ($p.minor | into int), patch: ($p.patch | into int),
     pre: (if $p.pre == null { [] } else { $p.pre | split row "." })}
}

# Semantic version precedence: -1, 0 or 1 (build metadata is ignored).
def semver-compare [a: string, b: string] {
    let x = semver-parts $a
    let y = semver-parts $b
    for f in [major minor patch] {
        let l = $x | get $f
        let r = $y | get $f
        if $l != $r { return (if $l < $r { -1 } else { 1 }) }
    }
    # A release ranks above its pre-releases.
    if ($x.pre | is-empty) or ($y.pre | is-empty) {
        return (if ($x.pre | length) == ($y.pre | length) { 0 } else if ($x.pre | is-empty) { 1 } else { -1 })
    }
    for i in 0..<([($x.pre | length) ($y.pre | length)] | math min) {
        let l = $x.pre | get $i
        let r = $y.pre | get $i
        if $l == $r { continue }
        let ln = $l =~ '^[0-9]+$'
        let rn = $r =~ '^[0-9]+$'
        # Numeric identifiers compare as numbers and rank below alphanumeric ones.
        return (if $ln and $rn {
            if ($l | into int) < ($r | into int) { -1 } else { 1 }
        } else if $ln { -1 } else if $rn { 1 } else if $l < $r { -1 } else { 1 })
    }
    let lx = $x.pre | length
    let ly = $y.pre | length
    if $lx == $ly { 0 } else if $lx < $ly { -1 } else { 1 }
}

def sort-newest [versions: list<string>] {
    $versions | sort-by --custom {|a, b| (semver-compare $a $b) > 0 }
}

def is-prerelease [v: string] { ($v | split row "+" | first | str contains "-") }

# The highest stable version, or null when there are only pre-releases (those load only when asked for by
# version, as in the service). `versions`: newest first.
def pick-latest [versions: list<string>] {
    let stable = $versions | where {|v| not (is-prerelease $v) }
    if ($stable | is-empty) { null } else { $stable | first }
}

# --- checks ----------------------------------------------------------------------------------------------------

def toml-error [err: record] {
    let help = $err.details?.help? | default "" | lines | each {|l| $l | str trim } | where {|l| $l != "" }
    if ($help | is-empty) { $err.msg } else if ($help | first | str starts-with "TOML parse error") {
        $"($help | first | str replace 'TOML parse error at ' ''): ($help | last)"
    } else { $"($err.msg): ($help | str join ' ')" }
}

def type-name [value: any] { $value | describe | split row "<" | first }

# Parse and check <folder>/metadata.toml against the folder it sits in.
# `version`: the version folder's name (versioned layout) or null (one-version layout).
# Returns {metadata: <wire ExtensionMetadata or null>, problems: [string]}.
def read-metadata [folder: string, type: string, name: string, version: any] {
    let file = $folder | path join metadata.toml
    if (kind $file) != "file" { return {metadata: null, problems: ["metadata.toml missing"]} }
    let parsed = try { {ok: (open --raw $file | from toml)} } catch {|e| {error: (toml-error $e)} }
    if "error" in $parsed {
        return {metadata: null, problems: [$"metadata.toml is not valid TOML: ($parsed.error)"]}
    }
    let m = $parsed.ok
    mut problems = []
    for key in ($m | columns) {
        if $key not-in $METADATA_KEYS { $problems ++= [$"unknown key: ($key)"] }
    }
    for key in [name version description type] {
        if $key not-in $m {
            $problems ++= [$"missing field: ($key)"]
        } else if (type-name ($m | get $key)) != "string" {
            $problems ++= [$"field ($key) must be a string, not (type-name ($m | get $key))"]
        }
    }
    for key in [author repository] {
        if $key in $m and (type-name ($m | get $key)) != "string" {
            $problems ++= [$"field ($key) must be a string, not (type-name ($m | get $key))"]
        }
    }
    let declared_name = $m.name? | default ""
    if (type-name $declared_name) == "string" and "name" in $m and $declared_name != $name {
        $problems ++= [$"name '($declared_name)' does not match the folder name '($name)'"]
    }
    let declared_type = $m.type? | default ""
    if (type-name $declared_type) == "string" and "type" in $m {
        if $declared_type not-in ($TYPE_FOLDERS | columns) {
            $problems ++= [$"type '($declared_type)' must be one of provider, taskserv, cluster"]
        } else if $declared_type != $type {
            $problems ++= [$"type '($declared_type)' does not match the folder type '($type)'"]
        }
    }
    let declared_version = $m.version? | default ""
    if (type-name $declared_version) == "string" and "version" in $m {
        if not ($declared_version =~ $SEMVER_RE) {
            $problems ++= [$"version '($declared_version)' is not a semantic version"]
        } else if $version != null and $declared_version != $version {
            $problems ++= [$"version '($declared_version)' does not match the version folder '($version)'"]
        }
    }
    let deps = $m.dependencies? | default []
    if (type-name $deps) not-in [list table] {
        $problems ++= [$"field dependencies must be a list of strings, not (type-name $deps)"]
    } else {
        for dep in $deps {
            if (type-name $dep) != "string" {
                $problems ++= [$"dependency ($dep | to nuon) must be a string"]
            } else if not ($dep =~ $DEPENDENCY_RE) {
                $problems ++= [$"dependency '($dep)' is not [type:]name[@constraint]"]
            } else if ($dep | str contains ":") and ($dep | split row ":" | first) not-in ($TYPE_FOLDERS | columns) {
                $problems ++= [$"dependency '($dep)' names an unknown type"]
            }
        }
    }
    if ($problems | is-not-empty) { return {metadata: null, problems: $problems} }
    {
        metadata: {
            name: $m.name, version: $m.version, description: $m.description, extension_type: $m.type,
            dependencies: $deps, author: ($m.author? | default null), repository: ($m.repository? | default null)
        }
        problems: []
    }
}

# Every entry under `dir`, without following symlinks: [{rel, type}], breadth first. `ls --all` on a plain string
# path is literal (no glob), and unlike `glob **` it sees every name; a name with a control character comes back
# escaped (`\u{a}` for a newline), which entry-problems refuses.
def walk [dir: string] {
    let base = $dir | path expand
    mut out = []
    mut todo = [""]
    while ($todo | is-not-empty) {
        let prefix = $todo | first
        $todo = $todo | skip 1
        let here = if $prefix == "" { $base } else { $base | path join $prefix }
        for e in (ls --all $here) {
            let name = $e.name | path basename
            let rel = if $prefix == "" { $name } else { $"($prefix)/($name)" }
            $out ++= [{rel: $rel, type: $e.type}]
            if $e.type == "dir" { $todo ++= [$rel] }
        }
    }
    $out
}

# Only regular files and folders: anything else (a symlink above all) is a problem. So is a name with a control
# character (a newline, say): the digest is a list of lines, and such a name is never meant.
def entry-problems [entries: list] {
    mut kinds = []
    mut names = []
    for e in $entries {
        if $e.type == "symlink" {
            $kinds ++= [$"symlink not allowed: ($e.rel)"]
        } else if $e.type not-in [file dir] {
            $kinds ++= [$"not a regular file or folder: ($e.rel)"]
        }
        if $e.rel =~ $CONTROL_RE or ($e.rel | str contains '\u{') {
            $names ++= [$"file name with a control character: ($e.rel)"]
        }
    }
    $kinds ++ $names
}

# All the problems of one extension folder: metadata, symlinks, mod.nu. {metadata, problems}
# `version`: the version folder's name, null in the one-version layout.
def check-extension [folder: string, type: string, name: string, version: any] {
    if (kind $folder) == "symlink" {
        return {metadata: null, problems: ["symlink not allowed: ."]}
    }
    let read = read-metadata $folder $type $name $version
    mut problems = $read.problems
    $problems ++= (entry-problems (walk $folder))
    let module = $folder | path join mod.nu
    if (kind $module) != "file" {
        $problems ++= ["mod.nu missing"]
    } else {
        let parse_error = try { nu-check --as-module --debug $module; null } catch {|e|
            $e.details?.labels?.0?.text? | default $e.msg | str replace --regex '^Found : ' ''
        }
        if $parse_error != null { $problems ++= [$"mod.nu does not parse as a Nushell module: ($parse_error)"] }
    }
    {metadata: $read.metadata, problems: ($problems | uniq)}
}

# --- discovery -------------------------------------------------------------------------------------------------

def discover-type [type: string, only: any] {
    mut seen = []
    mut found = []
    for root in (roots) {
        let names = names-in $root $type | where {|n| $n not-in $seen and ($only == null or $n == $only) } | sort
        for name in $names {
            let ext = extension-at ($root | path join ($TYPE_FOLDERS | get $type) $name)
            if $ext == null { continue }
            $seen ++= [$name]
            let entry = available $ext $type $name
            if $entry != null { $found ++= [$entry] }
        }
    }
    $found | sort-by name
}

# One Available entry ({extension_type, name, versions, latest}), or null when no version of it is usable.
# `latest` is null when there are only pre-releases. Discovery checks metadata only (cheap); `load` checks everything.
def available [ext: record, type: string, name: string] {
    if $ext.layout == "symlink" {
        warn $"skipping ($type) ($name) at ($ext.dir): symlink not allowed"
        return null
    }
    let versions = if $ext.layout == "single" { [null] } else { $ext.versions }
    mut good = {}
    for v in $versions {
        let folder = if $v == null { $ext.dir } else { $ext.dir | path join $v }
        let read = if (kind $folder) == "symlink" {
            {metadata: null, problems: ["symlink not allowed: ."]}
        } else { read-metadata $folder $type $name $v }
        if ($read.problems | is-empty) {
            $good = $good | insert $read.metadata.version $read.metadata
        } else {
            let label = if $v == null { "" } else { $" ($v)" }
            warn $"skipping ($type) ($name)($label) at ($folder): ($read.problems | str join '; ')"
        }
    }
    if ($good | is-empty) { return null }
    let ordered = sort-newest ($good | columns)
    let latest = pick-latest $ordered
    let metadata = if $latest == null { null } else { $good | get $latest }
    {extension_type: $type, name: $name, versions: $ordered, latest: $metadata}
}

# --- the cache -------------------------------------------------------------------------------------------------

# Digest of an extension folder (the Python side recomputes it; keep both in step):
#   take every regular file under the folder, by its path relative to the folder with "/" separators, sorted by
#   that path in byte order; text = concatenation of "<relpath>\t<sha256 hex of the file's bytes>\n";
#   digest = "sha256:" + sha256 hex of text (UTF-8). Folders, modes and times do not count.
def digest [dir: string, entries: list] {
    mut files = []
    for e in $entries { if $e.type == "file" { $files ++= [$e.rel] } }
    mut text = ""
    for rel in ($files | sort) { $text += $"($rel)\t(open --raw ($dir | path join $rel) | hash sha256)\n" }
    $"sha256:($text | hash sha256)"
}

# Copy `src` to <cache>/<type>/<name>/<version>/, written aside and renamed into place, so a reader sees the old
# copy, or for an instant none, or the whole new one. Returns {path, digest}; the digest is of the copy itself.
def install-copy [src: string, type: string, name: string, version: string] {
    let result = try {
        let parent = cache-dir | path join $type $name
        if (kind $parent) != "dir" { mkdir $parent }
        let parent = $parent | path expand
        remove-stale $parent
        let tag = random chars --length 12
        let tmp = $parent | path join $".($version).tmp-($tag)"
        try {
            cp --recursive $src $tmp
            let entries = walk $tmp
            let bad = entry-problems $entries
            # The source changed between the check and the copy.
            if ($bad | is-not-empty) { error make {msg: $"copy is not clean: ($bad | str join '; ')"} }
            let sum = digest $tmp $entries
            {ok: {path: (swap-in $tmp $parent $version $tag), digest: $sum}}
        } catch {|e|
            rm --recursive --force --permanent $tmp
            error make {msg: $e.msg}
        }
    } catch {|e| {error: $e.msg} }
    if "error" in $result {
        fail load_failed $"could not copy ($type) ($name) ($version) into the cache: ($result.error)" {
            reason: $result.error
        }
    }
    $result.ok
}

# Rename the finished copy `tmp` to <parent>/<version>, moving an existing copy aside first and removing it after.
# Only another process loading the same version at the same moment (several services sharing one cache folder)
# can get in the way: our rename then fails because the destination reappeared (we try again), or `mv` moves ours
# inside theirs (there is no `mv -T`): we remove it at once, and their complete copy of the same source stands.
def swap-in [tmp: string, parent: string, version: string, tag: string] {
    let dest = $parent | path join $version
    for attempt in 1..5 {
        let old = $parent | path join $".($version).old-($tag)-($attempt)"
        if (kind $dest) != "" { try { mv $dest $old } }
        try { mv $tmp $dest }
        # Another load may be removing parts of these at the same moment (ours moved inside theirs, or theirs inside
        # the copy we moved aside), so a removal that fails half-way is tried again.
        remove-tree $old ($dest | path join ($tmp | path basename))
        # Gone from where it was: either in place, or moved inside theirs and just removed.
        if (kind $tmp) == "" { return $dest }
    }
    error make {msg: $"could not rename ($tmp) to ($dest)"}
}

# Remove folders that other processes may be removing too: best effort, tried up to three times.
def remove-tree [...paths: string] {
    for attempt in 1..3 {
        mut left = false
        for p in $paths {
            if (kind $p) != "" {
                $left = true
                try { rm --recursive --force --permanent $p }
            }
        }
        if not $left { return }
    }
    for p in $paths { if (kind $p) != "" { warn $"could not remove ($p)" } }
}

# Leftovers of killed loads: ".<version>.tmp-*" and ".<version>.old-*" folders older than STALE_AFTER.
# Best effort: other loads may be renaming and removing entries here at the same time.
def remove-stale [parent: string] {
    try {
        let cutoff = (date now) - $STALE_AFTER
        for e in (ls --all $parent) {
            let base = $e.name | path basename
            if ($base | str starts-with ".") and $base =~ $LEFTOVER_RE and $e.modified? != null and (
                $e.modified < $cutoff
            ) {
                rm --recursive --force --permanent $e.name
            }
        }
    }
}
