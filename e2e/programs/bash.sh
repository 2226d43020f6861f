n=$(<e2e-input.txt)
line="e2e bash $((n * 2))"
printf '%s\n' "$line" >e2e-bash.txt
echo "$line"
