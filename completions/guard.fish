# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_guard_global_optspecs
    string join \n policy= lv= mount= size= timeout= check= on-failure= on-success= keep= extend-at= when-full= no-freeze finish trial-boot no-trial-boot trial-deadline= preserve= no-record dry-run wait json report= q/quiet h/help V/version
end

function __fish_guard_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_guard_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_guard_using_subcommand
    set -l cmd (__fish_guard_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c guard -n "__fish_guard_needs_command" -l policy -d 'Follow a policy: a name (/etc/guard/policies, /usr/share/guard/policies, built-in) or a path to a .toml file; flags given here override it' -r
complete -c guard -n "__fish_guard_needs_command" -l lv -d 'Protect this logical volume (repeatable)' -r
complete -c guard -n "__fish_guard_needs_command" -l mount -d 'Protect the logical volume mounted at (or holding) this path (repeatable)' -r -F
complete -c guard -n "__fish_guard_needs_command" -l size -d 'COW size of each thick snapshot: 2G, 512M, 20%ORIGIN, 10%FREE [default: 20%ORIGIN]' -r
complete -c guard -n "__fish_guard_needs_command" -l timeout -d 'Stop the command after this long (30s, 10m, 1h) and count it as a failure' -r
complete -c guard -n "__fish_guard_needs_command" -l check -d 'After the command exits 0, run this health check (repeatable; split into words like a shell would, run without one); a failing check is a failure' -r
complete -c guard -n "__fish_guard_needs_command" -l on-failure -d 'What to do when the command fails [default: rollback]' -r -f -a "rollback\t'Merge the snapshots back: undo the change'
keep\t'Keep the snapshots for `guard rollback RUN` or `guard commit RUN`'
ask\t'On a terminal, show the exit status and COW use and ask (rollback when nobody answers)'"
complete -c guard -n "__fish_guard_needs_command" -l on-success -d 'What to do when the command succeeds [default: discard]' -r -f -a "discard\t'Remove the snapshots: keep the change'
keep\t'Keep the snapshots until `guard commit RUN` (or `guard rollback RUN`)'"
complete -c guard -n "__fish_guard_needs_command" -l keep -d 'Keep the snapshots this long after success (implies --on-success keep)' -r
complete -c guard -n "__fish_guard_needs_command" -l extend-at -d 'Extend a snapshot (or thin pool) when its use passes this percentage [default: 80]' -r
complete -c guard -n "__fish_guard_needs_command" -l when-full -d 'When the VG (or thin pool) has no room to extend: freeze and hold, roll back, or continue [default: freeze]' -r -f -a "freeze\t'Freeze the filesystem and hold the command until `guard resume` or `guard rollback`'
rollback\t'Stop the command and roll back'
continue\t'Let the snapshot fill: the operator accepts losing the rollback point'"
complete -c guard -n "__fish_guard_needs_command" -l trial-deadline -d 'How long a trial boot has to come up healthy before it is rebooted into the fallback [default: the policy\'s, else 10m]' -r
complete -c guard -n "__fish_guard_needs_command" -l preserve -d 'Keep this path\'s contents through a rollback (e.g. /var/log: the logs of what went wrong); copied into the snapshot just before it is merged (repeatable)' -r -F
complete -c guard -n "__fish_guard_needs_command" -l report -d 'Write the final report as JSON to FILE' -r -F
complete -c guard -n "__fish_guard_needs_command" -l no-freeze -d 'Do not hold a set of volumes at one moment while snapshotting it (each LV is still snapshotted with its filesystem frozen by lvm2)'
complete -c guard -n "__fish_guard_needs_command" -l finish -d 'If a rollback is deferred because a target is mounted, unmount it to finish now (not /)'
complete -c guard -n "__fish_guard_needs_command" -l trial-boot -d 'After a kept change to /, boot it once on trial: unless that boot is confirmed healthy by its deadline, the next boot rolls it back by itself (GRUB; needs --keep)'
complete -c guard -n "__fish_guard_needs_command" -l no-trial-boot -d 'Do not arm a trial boot, even if the policy asks for one'
complete -c guard -n "__fish_guard_needs_command" -l no-record -d 'Do not record which paths the command changes (`guard diff` of a kept run then compares its snapshot instead)'
complete -c guard -n "__fish_guard_needs_command" -l dry-run -d 'Print the plan (targets, snapshot kinds and sizes, VG space) and change nothing'
complete -c guard -n "__fish_guard_needs_command" -l wait -d 'Wait for another guard run holding one of the volumes instead of failing at once'
complete -c guard -n "__fish_guard_needs_command" -l json -d 'Also write the final report as one JSON object to stderr'
complete -c guard -n "__fish_guard_needs_command" -s q -l quiet -d 'Print only warnings, errors and the summary'
complete -c guard -n "__fish_guard_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c guard -n "__fish_guard_needs_command" -s V -l version -d 'Print version'
complete -c guard -n "__fish_guard_needs_command" -a "snapshot" -d 'Take a consistent point-in-time copy of volumes (a database\'s, with its policy\'s lock), mount it read-only for a command (a backup), then unmount and remove it'
complete -c guard -n "__fish_guard_needs_command" -a "status" -d 'List runs and their snapshots: phase, COW use, pending merges'
complete -c guard -n "__fish_guard_needs_command" -a "recover" -d 'Finish or clean up what a killed guard or a power cut left; safe at every boot'
complete -c guard -n "__fish_guard_needs_command" -a "commit" -d 'Remove a kept run\'s snapshots: its change stays'
complete -c guard -n "__fish_guard_needs_command" -a "resume" -d 'Let a run that guard froze (its VG was full) go on, once space was freed'
complete -c guard -n "__fish_guard_needs_command" -a "rollback" -d 'Merge a run\'s snapshots back: its change is undone'
complete -c guard -n "__fish_guard_needs_command" -a "diff" -d 'What a run changed: paths added, modified, deleted and moved per volume (recorded while it ran), and the packages it installed, upgraded or removed'
complete -c guard -n "__fish_guard_needs_command" -a "mount" -d 'Mount a kept run\'s snapshots read-only (how the volumes were before it); one volume at DIR, several at DIR/VG/LV [default DIR: /run/guard/mnt/RUN]'
complete -c guard -n "__fish_guard_needs_command" -a "umount" -d 'Unmount what `guard mount RUN` mounted'
complete -c guard -n "__fish_guard_needs_command" -a "restore" -d 'Take paths back from a kept run\'s snapshot (contents, owner, mode, times, xattrs, ACLs); the rest of the change stays'
complete -c guard -n "__fish_guard_needs_command" -a "rehearse" -d 'Run a command on writable copies of the volumes, in a private mount namespace, and show what it would change; production is not written to and the copies are removed'
complete -c guard -n "__fish_guard_needs_command" -a "trial" -d 'Trial boots (--trial-boot): `confirm` is run by guard-confirm.service in a trial boot'
complete -c guard -n "__fish_guard_needs_command" -a "dm-status" -d 'Print the device-mapper status of a device as guard reads it (for diagnosis)'
complete -c guard -n "__fish_guard_needs_command" -a "watch" -d 'Watch the snapshots of kept runs and extend them before they fill (started in the background when a run is kept; ends when no kept run is left)'
complete -c guard -n "__fish_guard_needs_command" -a "policy" -d 'Check and list policies'
complete -c guard -n "__fish_guard_needs_command" -a "man" -d 'Print the man page (roff)'
complete -c guard -n "__fish_guard_needs_command" -a "completions" -d 'Print a shell completion script'
complete -c guard -n "__fish_guard_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l mount-at -d 'Mount the snapshots read-only under this folder for the command (made 0700 if missing; must be empty); the command finds it in GUARD_SNAPSHOT_ROOT' -r -F
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l policy -d 'Follow a policy for its targets and its hold hook (e.g. mysql: FLUSH TABLES WITH READ LOCK held across the snapshots)' -r
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l lv -d 'Copy this logical volume (repeatable)' -r
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l mount -d 'Copy the logical volume mounted at (or holding) this path (repeatable)' -r -F
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l size -d 'COW size of each thick snapshot: 2G, 512M, 20%ORIGIN, 10%FREE [default: 20%ORIGIN]' -r
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l timeout -d 'Stop the command after this long (30s, 10m, 1h)' -r
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l extend-at -d 'Extend a snapshot (or thin pool) when its use passes this percentage [default: 80]' -r
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l report -d 'Write the final report as JSON to FILE' -r -F
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l no-freeze -d 'Do not hold a set of volumes at one moment while snapshotting it'
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l dry-run -d 'Print the plan and where the snapshots would be mounted; change nothing'
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l wait -d 'Wait for another guard run holding one of the volumes instead of failing at once'
complete -c guard -n "__fish_guard_using_subcommand snapshot" -l json -d 'Also write the final report as one JSON object to stderr'
complete -c guard -n "__fish_guard_using_subcommand snapshot" -s q -l quiet -d 'Print only warnings, errors and the summary'
complete -c guard -n "__fish_guard_using_subcommand snapshot" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand status" -l json -d 'Machine-readable output (schema guard.status/1)'
complete -c guard -n "__fish_guard_using_subcommand status" -l all -d 'Include finished runs'
complete -c guard -n "__fish_guard_using_subcommand status" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand recover" -l expire -d 'Also commit kept runs whose keep window has ended'
complete -c guard -n "__fish_guard_using_subcommand recover" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand commit" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand resume" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand rollback" -l finish -d 'Complete a deferred merge now: unmount the targets, reactivate, wait, mount again'
complete -c guard -n "__fish_guard_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand diff" -l content -d 'A unified diff of this file: as it was before the run (its kept snapshot) and now' -r -F
complete -c guard -n "__fish_guard_using_subcommand diff" -l json -d 'Machine-readable output (schema guard.diff/1)'
complete -c guard -n "__fish_guard_using_subcommand diff" -l compare -d 'Compare the kept run\'s snapshot with the live filesystem instead of reading the recording (metadata first, contents where it differs)'
complete -c guard -n "__fish_guard_using_subcommand diff" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand mount" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand umount" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand restore" -l exact -d 'Make each path exactly as it was: remove what the run added inside it, and a path that did not exist before the run'
complete -c guard -n "__fish_guard_using_subcommand restore" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l policy -d 'Follow a policy: a name (/etc/guard/policies, /usr/share/guard/policies, built-in) or a path to a .toml file; flags given here override it' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l lv -d 'Protect this logical volume (repeatable)' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l mount -d 'Protect the logical volume mounted at (or holding) this path (repeatable)' -r -F
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l size -d 'COW size of each thick snapshot: 2G, 512M, 20%ORIGIN, 10%FREE [default: 20%ORIGIN]' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l timeout -d 'Stop the command after this long (30s, 10m, 1h) and count it as a failure' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l check -d 'After the command exits 0, run this health check (repeatable; split into words like a shell would, run without one); a failing check is a failure' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l on-failure -d 'What to do when the command fails [default: rollback]' -r -f -a "rollback\t'Merge the snapshots back: undo the change'
keep\t'Keep the snapshots for `guard rollback RUN` or `guard commit RUN`'
ask\t'On a terminal, show the exit status and COW use and ask (rollback when nobody answers)'"
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l on-success -d 'What to do when the command succeeds [default: discard]' -r -f -a "discard\t'Remove the snapshots: keep the change'
keep\t'Keep the snapshots until `guard commit RUN` (or `guard rollback RUN`)'"
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l keep -d 'Keep the snapshots this long after success (implies --on-success keep)' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l extend-at -d 'Extend a snapshot (or thin pool) when its use passes this percentage [default: 80]' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l when-full -d 'When the VG (or thin pool) has no room to extend: freeze and hold, roll back, or continue [default: freeze]' -r -f -a "freeze\t'Freeze the filesystem and hold the command until `guard resume` or `guard rollback`'
rollback\t'Stop the command and roll back'
continue\t'Let the snapshot fill: the operator accepts losing the rollback point'"
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l trial-deadline -d 'How long a trial boot has to come up healthy before it is rebooted into the fallback [default: the policy\'s, else 10m]' -r
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l preserve -d 'Keep this path\'s contents through a rollback (e.g. /var/log: the logs of what went wrong); copied into the snapshot just before it is merged (repeatable)' -r -F
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l report -d 'Write the final report as JSON to FILE' -r -F
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l no-freeze -d 'Do not hold a set of volumes at one moment while snapshotting it (each LV is still snapshotted with its filesystem frozen by lvm2)'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l finish -d 'If a rollback is deferred because a target is mounted, unmount it to finish now (not /)'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l trial-boot -d 'After a kept change to /, boot it once on trial: unless that boot is confirmed healthy by its deadline, the next boot rolls it back by itself (GRUB; needs --keep)'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l no-trial-boot -d 'Do not arm a trial boot, even if the policy asks for one'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l no-record -d 'Do not record which paths the command changes (`guard diff` of a kept run then compares its snapshot instead)'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l dry-run -d 'Print the plan (targets, snapshot kinds and sizes, VG space) and change nothing'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l wait -d 'Wait for another guard run holding one of the volumes instead of failing at once'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -l json -d 'Also write the final report as one JSON object to stderr'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -s q -l quiet -d 'Print only warnings, errors and the summary'
complete -c guard -n "__fish_guard_using_subcommand rehearse" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c guard -n "__fish_guard_using_subcommand trial; and not __fish_seen_subcommand_from confirm help" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand trial; and not __fish_seen_subcommand_from confirm help" -f -a "confirm" -d 'In a trial boot: check it (no unit failed that had not failed before the change, and the policy\'s [trial] checks); healthy ends the trial, else exit 1 (the unit reboots into the fallback)'
complete -c guard -n "__fish_guard_using_subcommand trial; and not __fish_seen_subcommand_from confirm help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c guard -n "__fish_guard_using_subcommand trial; and __fish_seen_subcommand_from confirm" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand trial; and __fish_seen_subcommand_from help" -f -a "confirm" -d 'In a trial boot: check it (no unit failed that had not failed before the change, and the policy\'s [trial] checks); healthy ends the trial, else exit 1 (the unit reboots into the fallback)'
complete -c guard -n "__fish_guard_using_subcommand trial; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c guard -n "__fish_guard_using_subcommand dm-status" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand watch" -l period -d 'How long to watch before reading the journal again' -r
complete -c guard -n "__fish_guard_using_subcommand watch" -l once -d 'Watch one period, then exit'
complete -c guard -n "__fish_guard_using_subcommand watch" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand policy; and not __fish_seen_subcommand_from check list help" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand policy; and not __fish_seen_subcommand_from check list help" -f -a "check" -d 'Validate a policy and print the settings it gives (merged with the defaults)'
complete -c guard -n "__fish_guard_using_subcommand policy; and not __fish_seen_subcommand_from check list help" -f -a "list" -d 'List the policies --policy can find, in search order'
complete -c guard -n "__fish_guard_using_subcommand policy; and not __fish_seen_subcommand_from check list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from check" -l json -d 'Machine-readable output (schema guard.policy/1)'
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from list" -l json
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "check" -d 'Validate a policy and print the settings it gives (merged with the defaults)'
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the policies --policy can find, in search order'
complete -c guard -n "__fish_guard_using_subcommand policy; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c guard -n "__fish_guard_using_subcommand man" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand completions" -s h -l help -d 'Print help'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "snapshot" -d 'Take a consistent point-in-time copy of volumes (a database\'s, with its policy\'s lock), mount it read-only for a command (a backup), then unmount and remove it'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "status" -d 'List runs and their snapshots: phase, COW use, pending merges'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "recover" -d 'Finish or clean up what a killed guard or a power cut left; safe at every boot'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "commit" -d 'Remove a kept run\'s snapshots: its change stays'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "resume" -d 'Let a run that guard froze (its VG was full) go on, once space was freed'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "rollback" -d 'Merge a run\'s snapshots back: its change is undone'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "diff" -d 'What a run changed: paths added, modified, deleted and moved per volume (recorded while it ran), and the packages it installed, upgraded or removed'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "mount" -d 'Mount a kept run\'s snapshots read-only (how the volumes were before it); one volume at DIR, several at DIR/VG/LV [default DIR: /run/guard/mnt/RUN]'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "umount" -d 'Unmount what `guard mount RUN` mounted'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "restore" -d 'Take paths back from a kept run\'s snapshot (contents, owner, mode, times, xattrs, ACLs); the rest of the change stays'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "rehearse" -d 'Run a command on writable copies of the volumes, in a private mount namespace, and show what it would change; production is not written to and the copies are removed'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "trial" -d 'Trial boots (--trial-boot): `confirm` is run by guard-confirm.service in a trial boot'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "dm-status" -d 'Print the device-mapper status of a device as guard reads it (for diagnosis)'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "watch" -d 'Watch the snapshots of kept runs and extend them before they fill (started in the background when a run is kept; ends when no kept run is left)'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "policy" -d 'Check and list policies'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "man" -d 'Print the man page (roff)'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c guard -n "__fish_guard_using_subcommand help; and not __fish_seen_subcommand_from snapshot status recover commit resume rollback diff mount umount restore rehearse trial dm-status watch policy man completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c guard -n "__fish_guard_using_subcommand help; and __fish_seen_subcommand_from trial" -f -a "confirm" -d 'In a trial boot: check it (no unit failed that had not failed before the change, and the policy\'s [trial] checks); healthy ends the trial, else exit 1 (the unit reboots into the fallback)'
complete -c guard -n "__fish_guard_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "check" -d 'Validate a policy and print the settings it gives (merged with the defaults)'
complete -c guard -n "__fish_guard_using_subcommand help; and __fish_seen_subcommand_from policy" -f -a "list" -d 'List the policies --policy can find, in search order'
